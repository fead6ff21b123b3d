"""The executor on a CUDA device against trusted references (skipped without one; run with --runslow on a GPU
host): full prefill against transformers, and every reuse strategy against the same strategy on CPU.

Uses a small random Llama so the test needs no packaged weights on the GPU machine."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from chunkcache.bench.ttft import SyntheticTemplate
from chunkcache.engine.executor import partial_prefill
from chunkcache.engine.prompt import Layout, Span
from chunkcache.engine.reuse import decide_and_prefill
from chunkcache.kv.build import isolated_record, template_record
from chunkcache.models.base import CausalLM
from chunkcache.models.loader import wrap
from chunkcache.strategies import make_strategy
from chunkcache.strategies.base import Plan

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
TOL = {torch.float32: 1e-3, torch.bfloat16: 3e-2}  # relative L2 error of the logits


def _models(dtype: torch.dtype) -> tuple[CausalLM, CausalLM]:
    """The same random weights as (fp32 on CPU, ``dtype`` on the device)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    cpu = LlamaForCausalLM(cfg).eval()
    return wrap(cpu), wrap(copy.deepcopy(cpu).to(DEVICE, dtype))


def _prompt(seed: int) -> tuple[SyntheticTemplate, list[list[int]], torch.Tensor, Layout]:
    """A 16-token template prefix, three random 300-token chunks, an 8-token question: template, chunks, ids
    (on the CPU) and layout."""
    template = SyntheticTemplate(list(range(1, 17)))
    gen = torch.Generator().manual_seed(seed)
    chunks = [torch.randint(0, 1000, (300,), generator=gen).tolist() for _ in range(3)]
    ids, spans = list(template.prefix_ids), []
    for c in chunks:
        spans.append(Span(len(ids), len(ids) + 300))
        ids += c
    layout = Layout(Span(0, 16), spans, Span(len(ids), len(ids) + 8), ["a", "b", "c"])
    return template, chunks, torch.tensor(ids + list(range(900, 908))), layout


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_full_matches_transformers_and_reuse_matches_cpu(dtype):
    cpu, dev = _models(dtype)
    template, chunks, ids, layout = _prompt(seed=1)

    with torch.inference_mode():
        ref = dev.hf(ids.to(DEVICE)[None]).logits[0, -1].float()
    full = partial_prefill(dev, ids, layout, None, [None] * 3, Plan(torch.arange(len(ids))))
    assert _rel(full.logits, ref) < TOL[dtype]

    # Records computed once (fp32, CPU) and rounded to the device dtype: both sides reuse the same values,
    # so what differs is only where and in what precision the partial prefill runs.
    prefix = template_record(cpu, template, dtype)
    recs = [isolated_record(cpu, template, prefix.to("cpu", torch.float32), c, n, dtype)
            for c, n in zip(chunks, "abc")]
    linked = Layout(layout.prefix, layout.chunks, layout.question, layout.chunk_ids, [(0, 2), (1, 2)])
    for spec in ("naive", "epic", "cacheblend", "cachecraft", "focus", "focus:ratio=0.9", "ape", "parallel", "graph"):
        out = {}
        lay = linked if spec == "graph" else layout  # graph: chunk c reads a and b (computed in the request)
        for model, device, dt in ((cpu, "cpu", torch.float32), (dev, DEVICE, dtype)):
            placed = [[r.to(device, dt)] for r in recs]
            _, _, res, _ = decide_and_prefill(model, ids, lay, prefix.to(device, dt), placed, make_strategy(spec))
            out[device] = res.logits
        assert _rel(out[DEVICE], out["cpu"]) < TOL[dtype], spec


@pytest.mark.parametrize("window", [None, 300])
def test_cuda_selected_attention_matches_sdpa(window):
    """The selected-query kernel at a real head size (128, 4 query heads per KV head) in bf16 against
    float64 SDPA on the same inputs, fresh random data, output poisoned first; few rows over many keys take
    the split-key path, checked as chosen and forced."""
    import torch.nn.functional as F

    from chunkcache.models.base import attention_mask
    from chunkcache.models.selected_attention import selected_attention

    gen = torch.Generator(device=DEVICE).manual_seed(3)
    for keys, n_q in ((2000, 300), (4096, 4096), (999, 1), (8192, 64)):  # the last splits its keys
        q = torch.randn(32, n_q, 128, device=DEVICE, dtype=torch.bfloat16, generator=gen)
        k = torch.randn(8, keys + 64, 128, device=DEVICE, dtype=torch.bfloat16, generator=gen)[:, :keys]
        v = torch.randn(8, keys, 128, device=DEVICE, dtype=torch.bfloat16, generator=gen)
        pos = torch.sort(torch.randperm(keys, device=DEVICE, generator=gen)[:n_q]).values
        out = selected_attention(q, k, v, pos, 128 ** -0.5, window)
        ref = F.scaled_dot_product_attention(q[None].double(), k[None].double(), v[None].double(),
                                             attn_mask=attention_mask(pos, keys, window), scale=128 ** -0.5,
                                             enable_gqa=True)[0].transpose(0, 1).reshape(n_q, -1)
        assert not out.isnan().any() and _rel(out, ref) < 1e-2, (keys, n_q)
        forced = selected_attention(q, k, v, pos, 128 ** -0.5, window, splits=5)
        assert not forced.isnan().any() and _rel(forced, ref) < 1e-2, (keys, n_q, "split")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window", [None, 700])
def test_cuda_paged_decode_matches_sdpa(dtype, window):
    """The paged decode kernel compiled, at a real head size (128) and 1, 4 and 8 query heads per KV head,
    block sizes 16 and 32, lengths across key tiles, blocks at the end of the pool in any order: against
    float64 SDPA over each request's blocks gathered by hand."""
    import torch.nn.functional as F

    from chunkcache.models.paged_attention import paged_decode_attention

    gen = torch.Generator(device=DEVICE).manual_seed(6)
    for heads, kv_heads, block in ((8, 8, 16), (32, 8, 16), (32, 4, 32)):
        n_blocks = 400
        pool = [torch.randn(n_blocks, block, kv_heads, 128, device=DEVICE, dtype=dtype, generator=gen) for _ in "kv"]
        lengths = torch.tensor([1, 63, 64, 1500, 2049], device=DEVICE)
        width = -(-2049 // block)
        tables = torch.stack([torch.randperm(n_blocks, device=DEVICE, generator=gen)[:width] for _ in range(5)])
        tables[4] = torch.arange(n_blocks - width, n_blocks, device=DEVICE).flip(0)  # the pool's last blocks
        q = torch.randn(5, heads, 128, device=DEVICE, dtype=dtype, generator=gen)
        out = paged_decode_attention(q, *pool, tables, lengths, 128 ** -0.5, window)
        for b, n in enumerate(lengths.tolist()):
            k, v = (p[tables[b]].reshape(-1, kv_heads, 128)[:n].transpose(0, 1).double() for p in pool)
            mask = torch.ones(1, n, dtype=torch.bool, device=DEVICE)
            if window is not None:
                mask[:, :max(0, n - window)] = False
            ref = F.scaled_dot_product_attention(q[b][:, None].double(), k, v, attn_mask=mask, scale=128 ** -0.5,
                                                 enable_gqa=True)[:, 0].reshape(-1)
            assert not out[b].isnan().any() and _rel(out[b], ref) < (1e-5 if dtype == torch.float32 else 1e-2), \
                (heads, kv_heads, block, n)


def test_cuda_grouped_scores_equal_the_expanded_product():
    """The probe's logits on CUDA (query heads grouped per KV head, K not expanded) against the product with
    K expanded to every head: a wrong grouping pairs a head with another head's keys."""
    _, dev = _models(torch.float32)
    gen = torch.Generator(device=DEVICE).manual_seed(5)
    q = torch.randn(8, 5, 32, device=DEVICE, generator=gen)
    k = torch.randn(2, 300, 32, device=DEVICE, generator=gen)
    ref = torch.matmul(q, k.repeat_interleave(4, 0).transpose(1, 2)) * dev.scaling
    assert torch.allclose(dev._scores(q, k), ref, rtol=1e-4, atol=1e-4)


def test_cuda_layer_kernels_round_as_transformers_does():
    """The fused RMSNorm and SiLU·up (models/layer_kernels.py) in bf16 against the transformers modules they
    replace: at most one bf16 step apart (a reduction's order), nearly all elements bit for bit."""
    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from chunkcache.models.layer_kernels import rms_norm, silu_mul

    gen = torch.Generator(device=DEVICE).manual_seed(4)
    norm = LlamaRMSNorm(4096, eps=1e-5).to(DEVICE, torch.bfloat16)
    norm.weight.data = torch.randn(4096, device=DEVICE, dtype=torch.bfloat16, generator=gen)
    x = torch.randn(65, 4096, device=DEVICE, dtype=torch.bfloat16, generator=gen) * 4
    gate, up = (torch.randn(65, 14336, device=DEVICE, dtype=torch.bfloat16, generator=gen) for _ in range(2))
    for ours, ref in ((rms_norm(x, norm.weight, norm.variance_epsilon), norm(x)), (silu_mul(gate, up), F.silu(gate) * up)):
        steps = (ours.view(torch.int16).int() - ref.view(torch.int16).int()).abs()
        assert ours.dtype == ref.dtype and int(steps.max()) <= 1 and float((steps > 0).float().mean()) < 0.01


def test_cuda_greedy_decode_matches_transformers():
    from chunkcache.engine.decode import generate

    _, model = _models(torch.float32)
    ids = torch.randint(0, 1000, (200,), device=DEVICE)
    layout = Layout(Span(0, 0), [], Span(0, 200))
    pre = partial_prefill(model, ids, layout, None, [], Plan(torch.arange(200)), reserve=10)
    ours = list(generate(model, pre, 10, stop_ids=set()))
    with torch.inference_mode():
        ref = model.hf.generate(ids[None], max_new_tokens=10, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0, 200:].tolist()
    assert ours == ref


def test_cuda_graph_decode_gives_the_eager_tokens_and_writes_only_its_slots():
    """Decode steps replayed from CUDA graphs give the eager step's tokens and K/V: 4 rows in the graph of 4,
    then 3 in the same graph (a padding row where a request was), then 1. Nothing outside the requests'
    slots and the reserved block is written."""
    from chunkcache.engine.kv_blocks import KVBlocks
    from chunkcache.engine.runner import DecodeRunner
    from chunkcache.engine.sequence import GenParams, Sequence

    _, model = _models(torch.float32)
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 1000, (n,), generator=gen) for n in (37, 120, 64, 90)]
    pres = [partial_prefill(model, p, Layout(Span(0, 0), [], Span(0, len(p))), None, [], Plan(torch.arange(len(p))))
            for p in prompts]
    runs = []
    for graphs in (True, False):
        blocks = KVBlocks(model.shape, 64, 16, model.device, model.dtype)
        runner = DecodeRunner(model, blocks, graphs)
        assert (runner.sink is not None) == graphs and blocks.capacity == 64 - graphs
        seqs = []
        for pre in pres:
            seq = Sequence([], pre.length, GenParams(max_tokens=20), None, set())
            seq.blocks = blocks.allocate(-(-(pre.length + 12) // 16))
            blocks.write_prompt(seq.blocks, pre.keys, pre.values, pre.length)
            seq.kv_len, seq.next_position, seq.pending = pre.length, pre.next_position, int(pre.logits.argmax())
            seqs.append(seq)
        tokens = []
        for step in range(10):
            running = seqs if step < 3 else seqs[:3] if step < 6 else seqs[1:2]
            out = runner.step(running)
            for seq, tok in zip(running, out):
                seq.kv_len, seq.pending = seq.kv_len + 1, tok
            tokens.append(out)
        if graphs:
            assert sorted(runner._graphs) == [1, 4]  # replayed, not run eagerly
        used = {b for seq in seqs for b in seq.blocks} | ({runner.sink} if graphs else set())
        untouched = [b for b in range(64) if b not in used]
        assert not blocks.k[:, untouched].any() and not blocks.v[:, untouched].any()
        kv = [torch.cat([pool[:, seq.blocks].flatten(1, 2)[:, :seq.kv_len] for pool in (blocks.k, blocks.v)])
              for seq in seqs]  # each request's K/V in slot order, prompt and decoded tokens
        runs.append((tokens, kv))
    assert runs[0][0] == runs[1][0]
    for graphed, eager in zip(runs[0][1], runs[1][1]):
        assert _rel(graphed, eager) < 1e-4  # float32: other batch sizes round differently; a wrong slot is O(1)


@pytest.mark.parametrize("graphs", [False, True])
def test_cuda_serving_engine_batches_to_the_single_request_tokens(graphs):
    """The serving engine on the device: paged, batched decode of concurrent requests (eager or replayed from
    CUDA graphs) gives the tokens of the one-request path (prefill + decode.generate) for each."""
    from chunkcache.bench.word_tokenizer import WordTokenizer
    from chunkcache.engine.decode import generate
    from chunkcache.engine.reuse import ReuseEngine
    from chunkcache.engine.sequence import GenParams, RagPrompt
    from chunkcache.engine.serving import ServingConfig, ServingEngine

    _, model = _models(torch.float32)
    tok = WordTokenizer(1000)
    eng = ServingEngine(ReuseEngine(model, tok, store_dtype=torch.float32), make_strategy("focus"),
                        ServingConfig(kv_bytes=64 << 20, max_running=8, cuda_graphs=graphs))
    tpl = eng.reuse.template
    words = [f"w{i}" for i in range(400)]
    chunks = [tpl.encode_chunk(" ".join(words[i:i + 60 + 7 * i])) for i in range(0, 300, 60)]
    prompts = [RagPrompt(chunks[i:i + 2 + i % 3], tpl.encode_question(f"question {i}")) for i in range(4)]
    for p in prompts:  # records for every chunk, so focus reuses and repairs
        eng.reuse.prefill(p.chunks, p.question_ids, make_strategy("naive"))
    handles = [eng.submit(p, GenParams(max_tokens=8)) for p in prompts]
    eng.start()
    try:
        served = [[t for out in h for t in out.token_ids] for h in handles]
    finally:
        eng.shutdown()
    for p, got in zip(prompts, served):
        pre = eng.reuse.prefill(p.chunks, p.question_ids, make_strategy("focus"), reserve=8)
        assert got == list(generate(model, pre.result, 8, eng.reuse.stop_ids)) and got


def test_cuda_records_streamed_from_pinned_host_give_the_same_logits():
    """Layer-wise streaming (engine/workspace.py): records in pinned host memory, copied in on a side stream
    while the first layers compute, give bit for bit the logits of the same records already on the device,
    for every strategy, through the probe and the plan that share the workspace."""
    from chunkcache.engine.workspace import Workspace
    from chunkcache.kv.record import host_copy

    _, dev = _models(torch.bfloat16)
    template, chunks, ids, layout = _prompt(seed=5)
    ids = ids.to(DEVICE)
    prefix = template_record(dev, template, torch.bfloat16)
    on_device = [isolated_record(dev, template, prefix, c, n, torch.bfloat16).to(DEVICE, torch.bfloat16)
                 for c, n in zip(chunks, "abc")]
    pinned = [r.to("cpu", torch.bfloat16) for r in on_device]
    for r in pinned:
        r.keys, r.values = host_copy(r.keys, pin=True), host_copy(r.values, pin=True)
    ws = Workspace.build(dev, len(ids), layout, prefix, pinned, None, 0)
    assert ws.events is not None  # it streamed
    for spec in ("naive", "cacheblend", "focus", "prefix"):
        out = []
        for recs in (on_device, pinned):
            _, _, res, _ = decide_and_prefill(dev, ids, layout, prefix, [[r] for r in recs], make_strategy(spec))
            out.append(res.logits)
        assert torch.equal(out[0], out[1]), spec


def test_cuda_parts_of_pinned_records_place_as_parts_on_the_device():
    """A matched part of a record (``ChunkRecord.slice``, what plain prompts reuse) in pinned host memory is
    copied as its whole record and cut out on the device (``ChunkRecord.whole_block``), two parts of one record
    from one copy: the logits are bit for bit those of the same parts already on the device."""
    from chunkcache.kv.record import host_copy

    _, dev = _models(torch.bfloat16)
    template, chunks, ids, _ = _prompt(seed=7)
    prefix = template_record(dev, template, torch.bfloat16)
    whole = [isolated_record(dev, template, prefix, c, n, torch.bfloat16) for c, n in zip(chunks, "abc")]
    for r in whole:
        r.keys, r.values = host_copy(r.keys, pin=True), host_copy(r.values, pin=True)
    cut = [(0, 10, 250), (1, 0, 200), (2, 50, 300), (0, 260, 300)]  # (record, start, end): two parts of a
    pinned = [whole[i].slice(a, b) for i, a, b in cut]
    on_device = [r.to(DEVICE, torch.bfloat16) for r in pinned]
    spans, pos = [], 16
    for _, a, b in cut:
        spans.append(Span(pos, pos + b - a))
        pos += b - a
    part_ids = torch.cat([ids[:16]] + [torch.tensor(chunks[i][a:b]) for i, a, b in cut] + [ids[-8:]]).to(DEVICE)
    part_layout = Layout(Span(0, 16), spans, Span(pos, pos + 8), ["a", "b", "c", "a2"])
    for spec in ("naive", "cacheblend"):
        out = []
        for recs in (on_device, pinned):
            _, _, res, _ = decide_and_prefill(dev, part_ids, part_layout, prefix.to(DEVICE, torch.bfloat16),
                                              [[r] for r in recs], make_strategy(spec))
            out.append(res.logits)
        assert torch.equal(out[0], out[1]), spec
