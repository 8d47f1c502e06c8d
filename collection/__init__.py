"""The offline side: download the published data, and make the files search reads (index, metadata, sidecar)."""
