"""What is stored and how: fetching the raw IDX files, the project's Kedro datasets (IDX,
torch files, saved training states and evaluations), binarisation and the content hashes
that key saved results. Imports nothing else from the package."""
