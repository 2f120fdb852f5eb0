"""Results: fold results into the paper's tables (`statistics`), their files (`tables`), figures (`plots`),
and the paper's own numbers to hold them against (`paper`)."""
