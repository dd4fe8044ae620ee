"""Work that runs beside the RPCs: the analysis workers and runners (persistent analyses) and
the webhook dispatcher. Jobs read and write through ``vigil.storage`` and never import the API."""
