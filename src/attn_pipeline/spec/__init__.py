"""What a run is: the typed configuration, the variants, the metric table, the parameter
files as Kedro reads them, and the names and keys of study cells. No I/O beyond reading
the configuration; everything else in the package builds on it."""
