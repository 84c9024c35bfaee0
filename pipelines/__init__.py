"""privface Dagster definitions: assets, checks, resources, jobs, schedules, sensors and
the IO manager. Wiring and tracking only; the math lives in `components`."""
