"""MLflow: the patient client and schema lock (`client`), tag names (`tags`), the fold tracker (`tracker`),
and the grid's summary run (`summary`)."""
