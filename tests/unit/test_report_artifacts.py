"""The report run's MLflow folders: files of one name from different defenses and attacks
land in different folders, so none overwrites another."""

from pipelines.tracking import report_artifacts


def test_files_of_one_name_never_share_a_folder(tmp_path):
    shared = [tmp_path / "metrics.json", tmp_path / "report.html"]
    attacks = {d: {"membership_inference": {"roc": f"/w/{d}/membership_roc.png"},
                   "template_inversion": {"grid": f"/w/{d}/grid.png", "stored/grid": f"/w/{d}/stored/grid.png"}}
               for d in ("baseline", "dctdp", "advface")}
    defenses = {"facemae": {"mae grid": "/w/facemae/facemae_grid.png"}}
    out = report_artifacts(shared, attacks, defenses)
    assert len(out) == 2 + 3 * 3 + 1
    destinations = [f"{folder}/{path.rsplit('/', 1)[-1]}" for path, folder in out]
    assert len(set(destinations)) == len(destinations)
    assert ("/w/dctdp/membership_roc.png", "report/dctdp/membership_inference/roc") in out
    assert ("/w/facemae/facemae_grid.png", "report/facemae/defense/mae_grid") in out
    assert all(folder == "report" for _, folder in out[:2])
