"""The straightforward TensorLayer 2 Pong training loop: the benchmark's baseline.

Written in the style of the original TensorLayer tutorial, on purpose without
any of tutorial_atari_pong.py's optimisations: one environment in this
process, an eager forward pass of the TensorLayer model on the dense 6400
float32 difference frame at every step, every observation of the batch kept
as a float32 row, and one RMSProp step per `batch_size` episodes on
tl.rein.cross_entropy_reward_loss over the whole dense batch.

It imports nothing from tutorial_atari_pong.py, so that changing the project
cannot change its baseline.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import ale_py  # noqa: E402
import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorlayer as tl  # noqa: E402

gym.register_envs(ale_py)

D = 80 * 80  # input dimensionality: 80x80 grid
H = 200  # hidden units
ACTIONS = [1, 2, 3]  # STOP, UP, DOWN


def prepro(frame):
    """210x160x3 uint8 frame -> 6400 float32 vector, as in the tutorial."""
    frame = frame[35:195]
    frame = frame[::2, ::2, 0].copy()
    frame[frame == 144] = 0
    frame[frame == 109] = 0
    frame[frame != 0] = 1
    return frame.astype(np.float32).ravel()


def get_model(inputs_shape, seed=1):
    glorot = tf.keras.initializers.GlorotUniform
    ni = tl.layers.Input(inputs_shape)
    nn = tl.layers.Dense(n_units=H, act=tf.nn.relu, W_init=glorot(seed=seed), name="hidden")(ni)
    nn = tl.layers.Dense(n_units=3, W_init=glorot(seed=seed + 1), name="output")(nn)
    return tl.models.Model(inputs=ni, outputs=nn, name="mlp")


def update(model, optimizer, xs, ys, rs, gamma):
    """One RMSProp step on the whole batch, every observation a dense float32 row."""
    epx = np.vstack(xs)
    epy = np.asarray(ys, dtype=np.int64)
    epr = np.asarray(rs, dtype=np.float32)
    disR = tl.rein.discount_episode_rewards(epr, gamma)
    disR -= np.mean(disR)
    std = np.std(disR)
    if std > 0:
        disR /= std
    with tf.GradientTape() as tape:
        _prob = model(epx)
        _loss = tl.rein.cross_entropy_reward_loss(_prob, epy, disR)
    grad = tape.gradient(_loss, model.trainable_weights)
    optimizer.apply_gradients(zip(grad, model.trainable_weights, strict=True))


def run(max_steps, batch_size=10, learning_rate=1e-4, gamma=0.99, decay_rate=0.99, seed=1):
    """Play exactly max_steps agent steps, updating every batch_size episodes
    (and once more at the end on whatever was collected since the last
    update, so there is always at least one). Returns a dict of counts and
    the seconds spent in the loop (playing and updating; building the env and
    the model is not counted)."""
    env = gym.make("Pong-v0")
    observation, _ = env.reset(seed=seed)
    np.random.seed(seed)
    model = get_model([None, D], seed)
    model.eval()
    optimizer = tf.compat.v1.train.RMSPropOptimizer(
        learning_rate, decay=decay_rate
    )  # the tutorial's

    prev_x = None
    xs, ys, rs = [], [], []
    steps = episodes = updates = 0
    update_seconds = 0.0
    started = time.perf_counter()
    while steps < max_steps:
        cur_x = prepro(observation)
        x = cur_x - prev_x if prev_x is not None else np.zeros(D, dtype=np.float32)
        prev_x = cur_x

        _prob = model(np.array([x]))
        prob = tf.nn.softmax(_prob)
        action = tl.rein.choice_action_by_probs(prob[0].numpy(), ACTIONS)

        observation, reward, terminated, truncated, _ = env.step(action)
        steps += 1
        xs.append(x)
        ys.append(action - 1)
        rs.append(reward)

        if terminated or truncated:
            episodes += 1
            observation, _ = env.reset()
            prev_x = None
            if episodes % batch_size == 0:
                t = time.perf_counter()
                update(model, optimizer, xs, ys, rs, gamma)
                update_seconds += time.perf_counter() - t
                updates += 1
                xs, ys, rs = [], [], []
    if xs or updates == 0:
        t = time.perf_counter()
        update(model, optimizer, xs, ys, rs, gamma)
        update_seconds += time.perf_counter() - t
        updates += 1
    seconds = time.perf_counter() - started
    env.close()
    return {
        "steps": steps,
        "episodes": episodes,
        "updates": updates,
        "seconds": seconds,
        "update_seconds": update_seconds,
    }


if __name__ == "__main__":
    import sys

    print(run(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
