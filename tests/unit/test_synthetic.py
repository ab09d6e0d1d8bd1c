import numpy as np

from vwm.config import SyntheticConfig
from vwm.data.synthetic import SyntheticClips, render, render_video, video_spec


def test_videos_are_deterministic_and_move():
    cfg = SyntheticConfig(num_videos=4, video_frames=16, height=32, width=32)
    a, meta = render_video(cfg, seed=3, index=1)
    b, _ = render_video(cfg, seed=3, index=1)
    assert a.shape == (16, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0], a[-1]), "objects must move"
    assert not np.array_equal(a, render_video(cfg, seed=4, index=1)[0])
    assert set(meta) >= {"num_objects", "direction", "speed", "fps"}
    assert cfg.min_objects <= meta["num_objects"] <= cfg.max_objects


def test_objects_bounce_and_stay_inside_the_frame():
    cfg = SyntheticConfig(min_objects=1, max_objects=1, min_speed=3.0, max_speed=3.0, height=32, width=32)
    spec = video_spec(cfg, seed=0, index=0)
    frames = render(spec, np.arange(0, 200), 32, 32)
    background = np.array(spec.background, dtype=np.uint8)
    visible = (frames != background).any(-1).sum(axis=(1, 2))
    # the object never leaves the frame: its painted area stays about constant through 200 frames of bouncing
    assert visible.min() > 0.6 * visible.max()


def test_any_frame_range_renders_without_replay():
    cfg = SyntheticConfig(video_frames=64)
    spec = video_spec(cfg, seed=1, index=2)
    whole = render(spec, np.arange(64), cfg.height, cfg.width)
    assert np.array_equal(whole[40:48:2], render(spec, np.arange(40, 48, 2), cfg.height, cfg.width))


def test_clip_batches_keyed_by_step_and_rank():
    src = SyntheticClips(SyntheticConfig(num_videos=8, video_frames=32, height=32, width=32), frames=8,
                         frame_step=2, crop=16, batch_size=4, seed=0, steps_per_epoch=10)
    b = src.batch(step=3, rank=0)["clips"]
    assert b.shape == (4, 8, 16, 16, 3) and b.dtype == np.uint8
    assert np.array_equal(b, src.batch(step=3, rank=0)["clips"])
    assert not np.array_equal(b, src.batch(step=4, rank=0)["clips"])
    assert not np.array_equal(b, src.batch(step=3, rank=1)["clips"])
