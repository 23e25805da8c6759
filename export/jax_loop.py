"""A whole-epoch-on-device training loop for Keras 3 on JAX (GPU machines).

``model.fit`` pays a fixed host cost per step (batch transfer, dispatch, state sync); on a sandboxed GPU
machine that cost measured ~300 ms a step and dwarfed a 48x48 CNN's compute. Here the dataset is copied
to the device once and each epoch is ONE jitted ``lax.scan`` over its steps: augmentation, forward,
backward and the optimizer update all stay on the device. It reuses the recipe, schedule, checkpoint
format and metrics of :mod:`train`, so a run folder from here exports like any other.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fer_sdk.errors import FerSdkError
from fer_sdk.files import atomic_write_json

from .train import (
    Splits,
    TrainConfig,
    apply_time_budget,
    build_training_model,
    class_weights,
    distillation_targets,
    evaluate_run,
    lr_at,
    new_run_state,
    save_epoch_network,
    to_model_input,
)


def _lr_index(optimizer) -> int:
    for i, v in enumerate(optimizer.variables):
        if v.path.endswith("learning_rate"):
            return i
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
    opt = model.optimizer
    opt.build(model.trainable_variables)
    loss_fn = model.loss
    lr_idx = _lr_index(opt)

    x_dev = jnp.asarray(to_model_input(data.x_train))
    st = new_run_state(cfg)
    y_dev = jnp.asarray(distillation_targets(cfg, data, st, log))  # one-hot labels, mixed with a teacher's
    w_dev = jnp.asarray(class_weights(data.y_train, cfg.class_weighting)[data.y_train].astype(np.float32))
    xv_dev = jnp.asarray(to_model_input(data.x_val))
    yv = np.asarray(data.y_val)
    n, bs = len(data.x_train), cfg.batch_size
    steps = n // bs

    def step(state, idx):
        tv, ntv, ov = state
        xb, yb, wb = x_dev[idx], y_dev[idx], w_dev[idx]

        def loss_of(tv_):
            yp, ntv2 = model.stateless_call(tv_, ntv, xb, training=True)
            return loss_fn(yb, yp, sample_weight=wb), (ntv2, yp)

        (loss, (ntv2, yp)), grads = jax.value_and_grad(loss_of, has_aux=True)(tv)
        tv2, ov2 = opt.stateless_apply(ov, grads, tv)
        acc = jnp.mean((jnp.argmax(yp, -1) == jnp.argmax(yb, -1)).astype(jnp.float32))
        return (tv2, ntv2, ov2), (loss, acc)

    @jax.jit
    def run_epoch(state, perm):
        state, (losses, accs) = jax.lax.scan(step, state, perm)
        return state, losses.mean(), accs.mean()

    net_tv = [v.value for v in net.trainable_variables]

    @jax.jit
    def infer(ntv_net, tv_net, x):
        return net.stateless_call(tv_net, ntv_net, x, training=False)[0]

    def predict_device(x_dev_, tv_net, ntv_net, chunk=4096):
        parts = [infer(ntv_net, tv_net, x_dev_[i : i + chunk]) for i in range(0, x_dev_.shape[0], chunk)]
        return np.asarray(jnp.concatenate(parts))

    # Map the training model's variables onto the network's (the network's are a subset, by identity).
    tv_ids = [id(v) for v in model.trainable_variables]
    ntv_ids = [id(v) for v in model.non_trainable_variables]
    net_tv_pos = [tv_ids.index(id(v)) for v in net.trainable_variables]
    net_ntv_pos = [ntv_ids.index(id(v)) for v in net.non_trainable_variables]
    del net_tv

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in opt.variables],
    )
    rng = np.random.default_rng(cfg.seed)
    import dataclasses

    atomic_write_json(out / "config.json", dataclasses.asdict(cfg))
    log(f"training {cfg.arch} on device ({jax.devices()[0]}), {steps} steps of {bs} per epoch, one scan per epoch")
    epoch = 0
    while epoch < st["planned_epochs"]:
        t0 = time.perf_counter()
        lr = lr_at(epoch, cfg, st["planned_epochs"])
        ov = list(state[2])
        ov[lr_idx] = jnp.asarray(lr, dtype=ov[lr_idx].dtype)
        state = (state[0], state[1], ov)
        perm = jnp.asarray(rng.permutation(n)[: steps * bs].reshape(steps, bs).astype(np.int32))
        state, loss, acc = run_epoch(state, perm)
        tv_net = [state[0][i] for i in net_tv_pos]
        ntv_net = [state[1][i] for i in net_ntv_pos]
        val_pred = predict_device(xv_dev, tv_net, ntv_net)
        val_acc = float((val_pred.argmax(1) == yv).mean())
        loss, acc = float(loss), float(acc)
        seconds = time.perf_counter() - t0
        st["wall_time_s"] += seconds
        st["history"].append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                "seconds": round(seconds, 2),
                "loss": loss,
                "accuracy": acc,
                "val_accuracy": val_acc,
            }
        )
        improved = val_acc > st["best_val_accuracy"]
        if improved or cfg.snapshots:
            for v, val in zip(net.trainable_variables, tv_net):
                v.assign(val)
            for v, val in zip(net.non_trainable_variables, ntv_net):
                v.assign(val)
        if improved:
            st["best_val_accuracy"], st["best_epoch"] = val_acc, epoch + 1
        save_epoch_network(net, out, epoch + 1, best=improved, snapshot=cfg.snapshots)
        st["epochs_done"] = epoch + 1
        apply_time_budget(cfg, st, epoch, log)
        atomic_write_json(out / "state.json", st)
        log(
            f"epoch {epoch + 1}/{st['planned_epochs']}  lr {lr:.5f}  loss {loss:.4f}  acc {acc:.4f}  "
            f"val_acc {val_acc:.4f}  best {st['best_val_accuracy']:.4f}@{st['best_epoch']}  {seconds:.1f}s"
        )
        epoch += 1

    best = keras.models.load_model(out / "best.keras")
    tvb = [v.value for v in best.trainable_variables]
    ntvb = [v.value for v in best.non_trainable_variables]

    def device_predict(model_, x_uint8, *, flip=False):
        xd = jnp.asarray(to_model_input(x_uint8))
        p = predict_device(xd, tvb, ntvb)
        if flip:
            p = (p + predict_device(xd[:, :, ::-1], tvb, ntvb)) / 2
        return p

    metrics = evaluate_run(out, data, cfg, st, predict=device_predict)
    atomic_write_json(out / "metrics.json", metrics)
    log(
        f"done: best {data.val_name} accuracy {metrics['splits'][data.val_name]['accuracy']:.4f} "
        f"(epoch {st['best_epoch']}), flip-TTA {metrics['splits'][data.val_name]['accuracy_flip_tta']:.4f}"
    )
    return metrics
