"""Running things: one function per pipeline step (`steps`), a fold folder kept in step with the store
(`sync`), aggregation (`aggregate`), cost estimates (`estimate`) and the one-call GPU study (`study`)."""
