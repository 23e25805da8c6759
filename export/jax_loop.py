"""A whole-epoch-on-device training loop for Keras 3 on JAX (GPU machines).

``model.fit`` pays a fixed host cost per step (batch transfer, dispatch, state sync); on a sandboxed GPU
machine that cost measured ~300 ms a step and dwarfed a 48x48 CNN's compute. Here the dataset is copied
to the device once and each epoch is ONE jitted ``lax.scan`` over its steps: augmentation, forward,
backward and the optimizer update all stay on the device. It reuses the recipe, schedule, checkpoint
format and metrics of :mod:`train`, so a run folder from here exports like any other.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from fer_sdk.errors import FerSdkError
from fer_sdk.files import atomic_write_json

from .train import (
    Splits,
    TrainConfig,
    build_training_model,
    class_weights,
    distillation_targets,
    end_epoch,
    finish_run,
    lr_at,
    new_run_state,
    to_model_input,
)


def _lr_index(optimizer) -> int:
    """Where the learning rate sits among ``optimizer.variables`` (it is set there before each epoch)."""
    for index, variable in enumerate(optimizer.variables):
        if variable.path.endswith("learning_rate"):
            return index
    raise RuntimeError("optimizer has no learning_rate variable")


def train_on_device(cfg: TrainConfig, data: Splits, out, *, log=print) -> dict:
    import jax
    import jax.numpy as jnp
    import keras

    if cfg.precision != "float32":
        raise FerSdkError(
            f"the on-device JAX loop trains in float32 only, got precision {cfg.precision!r}; drop --precision "
            "or train with `fer-sdk train`"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    model = build_training_model(cfg)
    net = model.layers[-1]
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    loss_fn = model.loss
    lr_index = _lr_index(optimizer)

    x_train = jnp.asarray(to_model_input(data.x_train))  # on the device from here on
    run_state = new_run_state(cfg)
    y_train = jnp.asarray(distillation_targets(cfg, data, run_state, log))  # one-hot labels, mixed with a teacher's
    sample_weight = jnp.asarray(class_weights(data.y_train, cfg.class_weighting)[data.y_train].astype(np.float32))
    x_val = jnp.asarray(to_model_input(data.x_val))
    y_val = np.asarray(data.y_val)
    n_train, batch_size = len(data.x_train), cfg.batch_size
    steps = n_train // batch_size

    def step(state, rows):  # one batch: its rows of the training set
        trainable, non_trainable, optimizer_vars = state
        x_batch, y_batch, w_batch = x_train[rows], y_train[rows], sample_weight[rows]

        def loss_of(trainable_):
            predicted, new_non_trainable = model.stateless_call(trainable_, non_trainable, x_batch, training=True)
            return loss_fn(y_batch, predicted, sample_weight=w_batch), (new_non_trainable, predicted)

        (loss, (new_non_trainable, predicted)), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
        new_trainable, new_optimizer_vars = optimizer.stateless_apply(optimizer_vars, grads, trainable)
        acc = jnp.mean((jnp.argmax(predicted, -1) == jnp.argmax(y_batch, -1)).astype(jnp.float32))
        return (new_trainable, new_non_trainable, new_optimizer_vars), (loss, acc)

    @jax.jit
    def run_epoch(state, batches):
        state, (losses, accuracies) = jax.lax.scan(step, state, batches)
        return state, losses.mean(), accuracies.mean()

    @jax.jit
    def infer(net_non_trainable, net_trainable, x):
        return net.stateless_call(net_trainable, net_non_trainable, x, training=False)[0]

    def predict_device(x_device, net_trainable, net_non_trainable, chunk=4096):
        parts = [
            infer(net_non_trainable, net_trainable, x_device[start : start + chunk])
            for start in range(0, x_device.shape[0], chunk)
        ]
        return np.asarray(jnp.concatenate(parts))

    # Map the training model's variables onto the network's (the network's are a subset, by identity).
    trainable_ids = [id(variable) for variable in model.trainable_variables]
    non_trainable_ids = [id(variable) for variable in model.non_trainable_variables]
    net_trainable_at = [trainable_ids.index(id(variable)) for variable in net.trainable_variables]
    net_non_trainable_at = [non_trainable_ids.index(id(variable)) for variable in net.non_trainable_variables]

    state = (
        [variable.value for variable in model.trainable_variables],
        [variable.value for variable in model.non_trainable_variables],
        [variable.value for variable in optimizer.variables],
    )
    rng = np.random.default_rng(cfg.seed)

    atomic_write_json(out / "config.json", dataclasses.asdict(cfg))
    log(
        f"training {cfg.arch} on device ({jax.devices()[0]}), {steps} steps of {batch_size} per epoch, "
        "one scan per epoch"
    )
    epoch = 0
    while epoch < run_state["planned_epochs"]:
        t0 = time.perf_counter()
        lr = lr_at(epoch, cfg, run_state["planned_epochs"])
        optimizer_vars = list(state[2])
        optimizer_vars[lr_index] = jnp.asarray(lr, dtype=optimizer_vars[lr_index].dtype)
        state = (state[0], state[1], optimizer_vars)
        batches = rng.permutation(n_train)[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)
        state, loss, acc = run_epoch(state, jnp.asarray(batches))
        net_trainable = [state[0][i] for i in net_trainable_at]
        net_non_trainable = [state[1][i] for i in net_non_trainable_at]
        val_probabilities = predict_device(x_val, net_trainable, net_non_trainable)
        val_acc = float((val_probabilities.argmax(1) == y_val).mean())
        seconds = time.perf_counter() - t0

        def network(trainable=net_trainable, non_trainable=net_non_trainable):
            for variable, value in zip(net.trainable_variables, trainable):
                variable.assign(value)
            for variable, value in zip(net.non_trainable_variables, non_trainable):
                variable.assign(value)
            return net

        end_epoch(
            cfg,
            run_state,
            out,
            epoch,
            lr=lr,
            seconds=seconds,
            metrics={"loss": float(loss), "accuracy": float(acc), "val_accuracy": val_acc},
            network=network,
            log=log,
        )
        epoch += 1

    best = keras.models.load_model(out / "best.keras")
    best_trainable = [v.value for v in best.trainable_variables]
    best_non_trainable = [v.value for v in best.non_trainable_variables]

    def device_predict(_model, x_uint8, *, flip=False):  # train.predict_proba's signature, run on the device
        x_device = jnp.asarray(to_model_input(x_uint8))
        probabilities = predict_device(x_device, best_trainable, best_non_trainable)
        if flip:
            flipped = predict_device(x_device[:, :, ::-1], best_trainable, best_non_trainable)
            probabilities = (probabilities + flipped) / 2
        return probabilities

    return finish_run(out, data, cfg, run_state, log=log, predict=device_predict)
