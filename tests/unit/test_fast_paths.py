"""The fast paths give the numbers of the eager ones: the compiled training step, the fused optimizer and
foreach clipping, the compiled planner rollout; and the benchmark's interval is that of a median."""

import json

import pytest
import torch

from vwm.configfile import load_config
from vwm.eval.stats import bootstrap_median
from vwm.models.ac_predictor import ACPredictor
from vwm.models.ac_world_model import ACWorldModel, FrameEncoder
from vwm.config import ModelConfig
from vwm.tasks.jepa_bench import step_runner
from vwm.tracking.tracker import DictTracker
from vwm.train.engine import LocalEngine
from vwm.train.trainer import RunEnv, Trainer
from tests.conftest import DEBUG_CONFIG
from tests.unit.test_trainer import Regression, _cfg

# the smallest JEPA of the debug family: compiling it takes seconds, its steps still mask and predict
TINY = ["train.device=cpu", "model.depth=1", "model.predictor.depth=1", "data.frames=4", "data.crop=32",
        "data.batch_size=2", "mask.sets.1.spatial_scale=[0.3,0.3]", "monitor.pictures=0"]


def test_compiled_jepa_steps_match_eager_losses_over_20_steps():
    eager = step_runner(load_config(DEBUG_CONFIG, TINY + ["train.compile=false"]))
    compiled = step_runner(load_config(DEBUG_CONFIG, TINY + ["train.compile=true"]))
    losses = [(eager()[1], compiled()[1]) for _ in range(20)]
    assert max(abs(a - b) for a, b in losses) < 1e-5, losses
    assert losses[-1][0] != losses[0][0]  # the weights moved: 20 updates were compared, not one


def test_fused_optimizer_and_foreach_clipping_match_the_per_tensor_loops():
    runs = {fused: step_runner(load_config(DEBUG_CONFIG, TINY + [f"optim.fused={fused}", "optim.grad_clip=0.01"]))
            for fused in (False, True)}
    losses = [(runs[False]()[1], runs[True]()[1]) for _ in range(8)]
    assert max(abs(a - b) for a, b in losses) < 1e-5, losses


def test_a_compiled_run_logs_its_first_step_as_compile_time(tmp_path):
    """Any task: the trainer compiles what the task names hot, and the first step's time (the compile)
    is ``perf/compile_s``, not a step time."""

    class Linear(torch.nn.Linear):  # dynamo traces no torch.nn frame on its own: a forward of ours
        def forward(self, x):
            return super().forward(x)

    class HotRegression(Regression):
        def build(self):
            torch.manual_seed(0)
            self.model = Linear(3, 1)
            return self.model

        def hot_modules(self, module):
            return [module]

    logs = {}
    for compiled in (False, True):
        task, cfg = HotRegression(), _cfg(**{"train.compile": compiled, "train.log_every": 5})
        engine = LocalEngine(task.build(), cfg.optim, torch.device("cpu"))
        tracker = DictTracker()
        env = RunEnv(rank=0, device=torch.device("cpu"), autocast_dtype=None, tracker=tracker,
                     sink=_NoSink(), progress="off")
        summary = Trainer(cfg, task, engine, env).fit(task.batches(0, None, None)[0], start_step=0, end_step=6)
        logs[compiled] = (summary.losses, tracker.metrics)
        assert (getattr(task.model, "_compiled_call_impl", None) is not None) == compiled
    assert logs[True][0] == pytest.approx(logs[False][0], abs=1e-6) and len(logs[True][0]) == 6
    assert "perf/compile_s" in logs[True][1] and "perf/compile_s" not in logs[False][1]
    assert [s for s, _ in logs[True][1]["perf/compile_s"]] == [0]
    assert [s for s, _ in logs[True][1]["perf/step_s"]] == [5]


class _NoSink:
    def save(self, done, position, metrics):
        return None

    def report(self, done, metrics):
        pass


def test_compiled_planner_rollout_matches_eager():
    torch.manual_seed(0)
    model = ModelConfig(preset="debug", dim=32, depth=1, heads=4)
    predictor = ACPredictor(enc_dim=32, dim=24, depth=1, heads=4, mlp_ratio=2.0, grid_hw=(2, 2), max_frames=4,
                            action_dim=3, state_dim=2, residual=True).eval()
    manifest = {"kind": "vjepa-ac", "frameskip": 1, "action_dim": 3, "normalisation": {
        "action_mean": [0.0] * 3, "action_std": [1.0] * 3, "state_mean": [1.0] * 2, "state_std": [2.0] * 2}}
    encoder = FrameEncoder(model, 16, 2, [0.5] * 3, [0.25] * 3)
    z0, actions, s0 = torch.randn(1, 4, 32), torch.randn(7, 3, 3), torch.randn(1, 2)
    with torch.no_grad():
        eager = ACWorldModel(manifest, encoder, predictor).rollout(z0, actions, s0)
        compiled = ACWorldModel(manifest, encoder, predictor).accelerate(compile=True)
        for _ in range(2):  # the second call reuses the graph
            out = compiled.rollout(z0, actions, s0)
            torch.testing.assert_close(out[0], eager[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out[1], eager[1], rtol=1e-5, atol=1e-5)
        half = ACWorldModel(manifest, encoder, predictor).accelerate(dtype=torch.bfloat16).rollout(z0, actions, s0)
    assert half[0].dtype == torch.float32 and (half[0] - eager[0]).abs().max() < 0.1  # bf16: close, not equal


def test_compiled_small_attention_matches_sdpa_with_masks_and_gradients():
    """Under compile, tiny attention problems take the broadcast path: same outputs and gradients as SDPA,
    block-causal mask included (a fully masked row cannot occur: every query sees its own frame)."""
    import torch.nn.functional as F

    from vwm.models.ac_predictor import block_causal_mask
    from vwm.models.layers import SMALL_ATTENTION, attend

    torch.manual_seed(0)
    mask_LL = block_causal_mask(3, 4)
    compiled = torch.compile(attend, dynamic=False)
    for q_shape, k_len, mask in (((5, 2, 3, 8), 9, None), ((5, 2, 12, 8), 12, mask_LL)):
        assert q_shape[2] * k_len <= SMALL_ATTENTION
        q = torch.randn(q_shape, requires_grad=True)
        k, v = (torch.randn(5, 2, k_len, 8, requires_grad=True) for _ in range(2))
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        grads_want = torch.autograd.grad(want.square().sum(), (q, k, v))
        got = compiled(q, k, v, mask)
        grads_got = torch.autograd.grad(got.square().sum(), (q, k, v))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for g, w in zip(grads_got, grads_want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_bootstrap_interval_of_a_median_brackets_it_and_narrows_with_agreement():
    mid, lo, hi = bootstrap_median([1.0, 1.2, 1.1, 1.3, 0.9])
    assert mid == pytest.approx(1.1) and lo <= mid <= hi and lo >= 0.9 and hi <= 1.3
    assert bootstrap_median([1.25] * 5) == (1.25, 1.25, 1.25)


def _counted_flops(fn) -> int:
    """FLOPs torch's counter sees in ``fn``, attention through the math kernel (the counter does not see
    the CPU flash kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return counter.get_total_flops()


def test_jepa_step_flops_are_what_the_step_computes():
    from vwm.tasks.jepa import JepaTask

    cfg = load_config(DEBUG_CONFIG, TINY)
    task = JepaTask(cfg, rank=0, device=torch.device("cpu"), run_name="flops", provenance={})
    engine = LocalEngine(task.build(), cfg.optim, torch.device("cpu"))
    batch = next(task.batches(0, None, None)[0])
    assert task.step_flops(batch) == _counted_flops(lambda: task.loss(engine, batch, 0)[0].backward())


def test_ac_step_flops_match_the_counted_step_within_5_percent():
    from vwm.models.ac_world_model import ACModule
    from vwm.models.flops import ac_step_flops

    torch.manual_seed(0)
    enc_cfg = ModelConfig(preset="debug", dim=32, depth=1, heads=4)
    for online in (False, True):
        target = FrameEncoder(enc_cfg, 32, None, [0.5] * 3, [0.25] * 3)
        pred = ACPredictor(enc_dim=32, dim=24, depth=2, heads=4, mlp_ratio=2.0, grid_hw=target.grid_hw,
                           max_frames=4, action_dim=3, state_dim=2)
        module = ACModule(pred, FrameEncoder(enc_cfg, 32, None, [0.5] * 3, [0.25] * 3) if online else None)
        frames = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8)
        actions, states = torch.randn(2, 3, 3), torch.randn(2, 4, 2)  # an action between frames

        def step():
            with torch.no_grad():
                z = target(frames)
            out = module(z, actions, states, 2, frames if online else None)
            (out[1].abs().mean() + out[3].abs().mean() + out[2].abs().mean()).backward()

        p = {"dim": 24, "depth": 2, "mlp_ratio": 2.0}
        counted = ac_step_flops(enc_cfg, 16, p, 2 + target.tokens, 4, 2, 2, online_encoder=online)
        assert counted == pytest.approx(_counted_flops(step), rel=0.05)


def test_a_run_logs_the_tflops_it_achieves_and_mfu_against_a_given_peak(tmp_path):
    from vwm.tasks.jepa import run_pretrain

    result = run_pretrain(load_config(DEBUG_CONFIG, TINY + [
        f"train.output_dir={tmp_path}", "train.steps=3", "train.log_every=1", "train.peak_tflops=2.0",
        "tracking.backend=jsonl"]), local=True)
    rows = [json.loads(line) for line in (tmp_path / result.name / "metrics.jsonl").read_text().splitlines()]
    tflops = [r["perf/tflops"] for r in rows if "perf/tflops" in r]
    mfu = [r["perf/mfu"] for r in rows if "perf/mfu" in r]
    assert len(tflops) == 3 and all(t > 0 for t in tflops)
    assert mfu == pytest.approx([t / 2.0 for t in tflops])


def test_the_compiled_hot_paths_trace_without_graph_breaks():
    """A graph break splits the compiled step and runs the gap eagerly: the V-JEPA loss (encoder, predictor,
    target) and the planner's rollout each trace as one graph."""
    from vwm.models.ac_world_model import rollout
    from vwm.tasks.jepa import JepaTask

    cfg = load_config(DEBUG_CONFIG, TINY)
    task = JepaTask(cfg, rank=0, device=torch.device("cpu"), run_name="breaks", provenance={})
    engine = LocalEngine(task.build(), cfg.optim, torch.device("cpu"))
    batch = next(task.batches(0, None, None)[0])
    explained = torch._dynamo.explain(lambda b: task.loss(engine, b, 0)[0])(batch)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    predictor = ACPredictor(enc_dim=32, dim=24, depth=1, heads=4, mlp_ratio=2.0, grid_hw=(2, 2), max_frames=4,
                            action_dim=3, state_dim=2, pos_embed="rope")
    explained = torch._dynamo.explain(rollout)(predictor, torch.randn(5, 4, 32), torch.randn(5, 3, 3),
                                               torch.randn(5, 2))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_gpu_paths_run_on_cpu_bf16_autocast_checkpointing_and_flash_attention():
    """What GPU runs switch on, exercised here: bf16 autocast stays close to fp32, activation checkpointing
    gives fp32's numbers exactly, and attention goes through SDPA's flash kernel (no mask blocks it)."""
    from torch.profiler import ProfilerActivity, profile

    runs = {name: step_runner(load_config(DEBUG_CONFIG, TINY + over)) for name, over in {
        "fp32": ["train.precision=fp32"], "bf16": ["train.precision=bf16"],
        "checkpointing": ["train.precision=fp32", "model.activation_checkpointing=true"]}.items()}
    losses = {name: [run()[1] for _ in range(3)] for name, run in runs.items()}
    assert losses["checkpointing"] == pytest.approx(losses["fp32"], abs=1e-6)
    assert losses["bf16"] == pytest.approx(losses["fp32"], abs=0.02) and losses["bf16"] != losses["fp32"]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        runs["fp32"]()
    kernels = {e.key for e in prof.key_averages()}
    assert any("flash_attention" in k for k in kernels), sorted(k for k in kernels if "attention" in k)
