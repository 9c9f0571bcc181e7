"""Network definitions: the MAR generator family (``lazygen.models.mar``) and its VAE tokenizers
(``lazygen.models.vae``). Subpackages are imported explicitly so importing one does not pull in the other."""
