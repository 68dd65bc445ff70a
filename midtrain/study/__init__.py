"""Studies: a whole experiment grid from one YAML spec (``spec``), planned as a DAG (``plan``), run
locally or on SLURM (``execute``), reported with ``midtrain.analysis`` (``report``)."""
