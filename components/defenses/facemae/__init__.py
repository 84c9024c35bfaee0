"""FaceMAE (issue 6): the FR model trains on masked-autoencoder reconstructions of the
private faces, never on the faces themselves. mae.py is the masked autoencoder, irm.py its
identity-preserving loss, defense.py the Defense and the System."""

from components.defenses.facemae.defense import FaceMAEConfig, FaceMAEDefense, FaceMAESystem

__all__ = ["FaceMAEConfig", "FaceMAEDefense", "FaceMAESystem"]
