"""Training the default models here, from generated or user data, with no pretrained weights.

Needs torch (the ``export`` extra); the runtime's CLI only registers its commands, torch-free.
"""
