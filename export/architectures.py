"""The two FER2013 CNNs as Keras 3 functional models (backend-agnostic).

Both take ``faces``: float32 (N, 48, 48, 1) in [0, 1] and return ``probabilities`` (N, 7) from a softmax.
Augmentation is *not* part of these models: training wraps them (see ``train.py``), so what is saved and
exported is exactly the inference graph.
"""

from __future__ import annotations

import keras
from keras import layers

from fer_sdk.constants import EMOTIONS, INPUT_NAME, INPUT_SIZE, OUTPUT_NAME

from .config import ARCHITECTURES

INPUT_SHAPE = (*INPUT_SIZE, 1)
NUM_CLASSES = len(EMOTIONS)


def _conv_block(x, filters: int, kernel: int, dropout: float, name: str):
    x = layers.Conv2D(filters, kernel, padding="same", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    return layers.Dropout(dropout, name=f"{name}_drop")(x)


def _dense_block(x, units: int, dropout: float, name: str):
    x = layers.Dense(units, name=f"{name}_dense")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    return layers.Dropout(dropout, name=f"{name}_drop")(x)


def build_shallow(dropout: float = 0.25, fc_dropout: float = 0.5) -> keras.Model:
    """Two conv layers (32, 64 filters of 3x3, each BN + ReLU + 2x2 max-pool + dropout), FC 512, softmax."""
    inputs = keras.Input(INPUT_SHAPE, name=INPUT_NAME)
    x = _conv_block(inputs, 32, 3, dropout, "block1")
    x = _conv_block(x, 64, 3, dropout, "block2")
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, activation="relu", name="fc1_dense")(x)
    x = layers.Dropout(fc_dropout, name="fc1_drop")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="fer_shallow")


def build_deep(dropout: float = 0.25, fc_dropout: float = 0.5) -> keras.Model:
    """4 conv + 2 FC layers: exactly the table in the model-factory issue (4,478,727 parameters)."""
    inputs = keras.Input(INPUT_SHAPE, name=INPUT_NAME)
    x = _conv_block(inputs, 64, 3, dropout, "block1")
    x = _conv_block(x, 128, 5, dropout, "block2")
    x = _conv_block(x, 512, 3, dropout, "block3")
    x = _conv_block(x, 512, 3, dropout, "block4")
    x = layers.Flatten(name="flatten")(x)
    x = _dense_block(x, 256, fc_dropout, "fc1")
    x = _dense_block(x, 512, fc_dropout, "fc2")
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="fer_deep")


BUILDERS = {"shallow": build_shallow, "deep": build_deep}


def build(arch: str, **kwargs) -> keras.Model:
    """Build an architecture by name; unknown names raise ``ValueError`` listing the valid ones."""
    try:
        builder = BUILDERS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}") from None
    return builder(**kwargs)


def with_dtype_policy(net, policy: str):
    """A copy of the functional ``net`` whose every layer has the Keras dtype ``policy``, holding ``net``'s
    weights (mixed policies keep float32 variables, so switching between them copies weights exactly)."""
    copy = keras.models.clone_model(
        net, clone_function=lambda layer: layer.__class__.from_config({**layer.get_config(), "dtype": policy})
    )
    copy.set_weights(net.get_weights())
    return copy


def float32_network(net):
    """``net`` itself when it computes in float32, else a float32 copy with its weights: saved and exported
    networks are float32.

    Every layer is checked, not the model's own policy: a network reloaded from a resumed run's
    ``last.keras`` reports a float32 model policy while its layers still compute in bfloat16."""
    if all(layer.dtype_policy.name == "float32" for layer in [net, *net.layers]):
        return net
    return with_dtype_policy(net, "float32")
