"""The method: equations, mixing, the device-resident data path, training, evaluation and FGSM.

Pure torch science: it knows configurations (`intermix_core.config`), prepared data
(`intermix_core.data`) and fold records (`intermix_core.records`), and nothing of MLflow, S3 or Kubeflow.
"""
