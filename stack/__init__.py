"""Running the whole system locally: the process runner, the offline demo and its small parts."""
