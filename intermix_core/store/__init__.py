"""The grid store (a local folder or an s3:// root): checksummed objects (`storage`), where everything lives
(`layout`), report versions (`reports`), grid specs and results (`grid_store`), prepared data (`prepared`)."""
