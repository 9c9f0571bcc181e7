"""lazygen: training-free acceleration of MAR and LlamaGen image generators, measured honestly."""

__version__ = "0.1.0"
