"""Assets by concern: data, models (training and defended systems), attacks, report."""
