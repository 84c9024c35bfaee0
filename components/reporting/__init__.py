"""Reporting: metrics.json to the contract of DESIGN.md section 5, scores, report.html."""
