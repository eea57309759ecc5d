"""The names textdiff's transformers classes are known by, shared by the light import hook (hf_auto.py) and the
classes themselves (hf_classes.py) without either importing the other at module level."""

MODEL_TYPE = "textdiff"
"""config.json's "model_type" (the same word as its "type")."""
WATCHED = ("transformers.models.auto.configuration_auto", "transformers.models.auto.modeling_auto")
"""The modules whose loading registers textdiff's classes: the config's, then the model's."""
