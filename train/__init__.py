"""Training the default models here, from generated or user data, with no pretrained weights.

Needs torch (the ``export`` extra); the runtime never imports this package.
"""
