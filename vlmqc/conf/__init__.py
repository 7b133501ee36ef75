"""The Hydra config, shipped with the package (``hydra.main(config_path="../conf")`` finds it as ``vlmqc.conf``)."""
