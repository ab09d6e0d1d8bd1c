"""TwoRooms and the Push-T adapter: gymnasium's checker, determinism, state round trips, collisions,
success criteria on hand-built states, and the scripted policies."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from vwm.envs import ENV_IDS, make_env, register_envs
from vwm.envs.policies import RandomWalk, make_policy
from vwm.envs.push_t import available

needs_pusht = pytest.mark.skipif(not available(), reason="gym-pusht is not installed (pip install -e '.[pusht]')")


def _rollout(env, seed: int, steps: int, kind: str, name: str):
    rng = np.random.default_rng([seed, 7])
    obs, _ = env.reset(seed=seed)
    policy = make_policy(name, kind)
    policy.reset(env, rng)
    frames, states = [obs["pixels"]], [env.get_state()]
    for _ in range(steps):
        obs, *_ = env.step(policy.act(env, rng).astype(np.float32))
        frames.append(obs["pixels"])
        states.append(env.get_state())
    return np.stack(frames), np.stack(states)


@pytest.mark.parametrize("name", ["two_rooms", pytest.param("push_t", marks=needs_pusht)])
def test_check_env_passes_without_warnings(name):
    register_envs()
    env = gym.make(ENV_IDS[name], image_size=32)
    assert env.spec.max_episode_steps == 100
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("name", ["two_rooms", pytest.param("push_t", marks=needs_pusht)])
def test_rollouts_are_deterministic_for_a_seed(name):
    a = _rollout(make_env(name, image_size=32), seed=3, steps=20, kind="expert", name=name)
    b = _rollout(make_env(name, image_size=32), seed=3, steps=20, kind="expert", name=name)
    c = _rollout(make_env(name, image_size=32), seed=4, steps=20, kind="expert", name=name)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert len(np.unique(a[1], axis=0)) > 10  # it moved


@pytest.mark.parametrize("name", ["two_rooms", pytest.param("push_t", marks=needs_pusht)])
def test_set_state_round_trip_and_goal_image(name):
    env = make_env(name, image_size=32)
    _, states = _rollout(env, seed=1, steps=15, kind="expert", name=name)
    mid = states[7]
    fresh = make_env(name, image_size=32)
    fresh.reset(seed=99)
    fresh.set_state(mid)
    assert np.allclose(fresh.get_state(), mid, atol=1e-9)
    # the same state gives the same picture and, stepped with the same action, the same next state
    env.set_state(mid)
    assert np.array_equal(fresh.render(), env.render())
    assert np.array_equal(env.goal_image(mid), env.render())
    action = np.array([0.6, -0.4], dtype=np.float32)
    fresh.step(action)
    env.step(action)
    assert np.allclose(fresh.get_state(), env.get_state(), atol=1e-6)
    with pytest.raises(ValueError, match="finite numbers"):
        env.set_state([1.0])


def test_two_rooms_collisions_stop_at_the_wall_and_the_door_lets_through():
    env = make_env("two_rooms", obs_type="state")
    r, face = env.agent_radius, env.wall_x - env.wall_width / 2 - env.agent_radius
    env.reset(options={"state": [face - 1.0, 10.0]})
    env.step([1.0, 0.0])  # would go 2.5 right; the wall face is 1 away
    assert env.get_state().tolist() == [face, 10.0]
    env.step([1.0, 1.0])  # pressed against the face: no sliding
    assert env.get_state().tolist() == [face, 10.0]
    env.step([-1.0, 0.0])
    assert env.get_state()[0] == pytest.approx(face - env.action_scale)
    env.set_state([face, env.door_y])  # level with the door: straight through
    for _ in range(4):
        env.step([1.0, 0.0])
    assert env.room(env.get_state()) == 1
    env.set_state([r + 0.5, r + 0.5])  # arena corner
    env.step([-1.0, -1.0])
    assert env.get_state().tolist() == [r, r]
    with pytest.raises(ValueError, match="inside a wall"):
        env.set_state([env.wall_x, 5.0])


def test_random_walk_never_enters_a_wall():
    env = make_env("two_rooms", obs_type="state", action_scale=4.0)
    rng = np.random.default_rng(0)
    policy = RandomWalk(persistence=0.95, noise_std=0.1)
    for episode in range(5):
        env.reset(seed=episode)
        policy.reset(env, rng)
        for _ in range(200):
            env.step(policy.act(env, rng))
            assert env.free(env.get_state())


def test_two_rooms_success_on_hand_built_states():
    env = make_env("two_rooms", success_radius=4.0)
    goal = np.array([50.0, 20.0])
    assert env.success([50.0, 23.9], goal) and not env.success([50.0, 24.1], goal)
    batch = env.success(np.array([[50.0, 20.0], [10.0, 10.0], [47.2, 17.2]]), goal)
    assert batch.tolist() == [True, False, True]
    _, info = env.reset(options={"state": [53.0, 20.0], "goal": goal})
    assert info["is_success"] and np.array_equal(info["goal"], goal)


@needs_pusht
def test_push_t_success_follows_dino_wm():
    env = make_env("push_t", image_size=32)
    goal = np.array([100.0, 100.0, 256.0, 256.0, math.pi / 4, 0.0, 0.0])
    near = goal.copy()
    near[:4] += [10.0, 0.0, 0.0, 15.0]  # one norm over agent and block: sqrt(100 + 225) = 18 < 20
    assert env.success(near, goal)
    far = goal.copy()
    far[:4] += [12.0, 0.0, 0.0, 16.0]  # 20: not below the threshold
    assert not env.success(far, goal)
    turned = goal.copy()
    turned[4] += math.pi / 9 - 0.01
    assert env.success(turned, goal)
    turned[4] += 0.02
    assert not env.success(turned, goal)
    wrapped = goal.copy()
    wrapped[4] = goal[4] + 2 * math.pi - 0.1  # angles compare on the circle
    assert env.success(wrapped, goal)
    _, info = env.reset(options={"state": goal[:5], "goal": goal})
    assert info["is_success"]


def test_noisy_expert_crosses_the_door_in_most_episodes():
    env = make_env("two_rooms", obs_type="state")
    crossed = 0
    for episode in range(20):
        rng = np.random.default_rng([0, episode])
        env.reset(seed=episode)
        policy = make_policy("two_rooms", "expert", expert_noise_std=0.3)
        policy.reset(env, rng)
        start_room = env.room(env.get_state())
        rooms = set()
        for _ in range(100):
            env.step(policy.act(env, rng))
            rooms.add(env.room(env.get_state()))
        crossed += (1 - start_room) in rooms
    assert crossed >= 16, f"the noisy expert crossed the door in only {crossed} of 20 episodes"


@needs_pusht
def test_push_t_expert_moves_the_block():
    env = make_env("push_t", obs_type="state")
    moved = 0
    for episode in range(4):
        rng = np.random.default_rng([0, episode])
        env.reset(seed=episode)
        policy = make_policy("push_t", "expert")
        policy.reset(env, rng)
        start = env.get_state()
        for _ in range(60):
            env.step(policy.act(env, rng))
        moved += np.linalg.norm(env.get_state()[2:4] - start[2:4]) > 20.0
    assert moved >= 3
