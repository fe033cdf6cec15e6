"""The kernel seams: every fused implementation against the plain-JAX reference.

On CPU the Pallas kernels run in Pallas's interpreter (the seam does this itself), so these
tests check the kernels' arithmetic and tiling here; that they also lower for GPU (Triton) and
TPU (Mosaic) is checked by exporting for those platforms, which needs no device. Whether they
compile there and how fast they run is `scripts/gpu_kernels.sh`'s question. Tiles are tiny (16)
so that every test crosses several query, key, token and feature blocks.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from sae import jumprelu
from xling_jax.analysis import sae_stats
from xling_jax.evaluation import scoring
from xling_jax.kernels import attention as attention_seam, sae_stats as sae_stats_seam, select
from xling_jax.kernels.attention import mosaic as attention_mosaic, triton as attention_triton
from xling_jax.kernels.sae_stats import mosaic as sae_mosaic, triton as sae_triton
from xling_jax.model import presets, transformer as model_lib

FUSED = ("pallas_triton", "pallas_mosaic")
TILES = dict(block_q=16, block_k=16)
SAE_TILES = {"pallas_triton": dict(block_t=16, block_w=128, block_d=32),
             "pallas_mosaic": dict(block_t=16, block_w=128)}


@pytest.fixture
def use_impl():
  """use_impl(kernel, impl): the process-wide choice for the test's duration."""
  previous = []

  def use(kernel, impl):
    previous.append((kernel, select.get_impl(kernel)))
    select.set_impl(kernel, impl)

  yield use
  for kernel, impl in reversed(previous):
    select.set_impl(kernel, impl)


# ---- attention ---------------------------------------------------------------------------------

def _qkv(seed, B, T, K, G, H, q_scale=1.0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((B, T, K, G, H)) * q_scale
  k, v = rng.standard_normal((2, B, T, K, H))
  return tuple(jnp.asarray(a, dtype) for a in (q, k, v))


def _lm_mask(real: np.ndarray, window):
  """[B, 1, 1, T, T] model mask for 0/1 rows `real` [B, T] (left or right padding)."""
  real = jnp.asarray(real)
  return model_lib.attention_mask_for(real, model_lib.positions_from_mask(real), window)


def _padded(lengths, T, left=()):
  """[B, T] 0/1: row b holds lengths[b] real tokens, right-padded (left-padded if b in left)."""
  real = np.zeros((len(lengths), T), np.int32)
  for b, n in enumerate(lengths):
    if b in left:
      real[b, T - n:] = 1
    else:
      real[b, :n] = 1
  return real


def _real_rows(mask):
  """[B, T] bool: the query rows that see at least one key. The others (left padding) are
  padding: the reference averages v over all keys there, the kernels need not."""
  real = np.asarray(mask)[:, 0, 0].any(-1)
  assert real.any()
  return real


def _exact_attention(q, k, v, mask, logit_softcap):
  """The attention the float32 implementations approximate, in float64 numpy."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("btkgh,bskh->bkgts", q, k)
  if logit_softcap is not None:
    logits = np.tanh(logits / logit_softcap) * logit_softcap
  logits = np.where(np.asarray(mask), logits, -np.inf)
  with np.errstate(invalid="ignore"):  # rows without keys: NaN here, never compared
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bkgts,bskh->btkgh", probs, v)


def _check(out, q, k, v, mask, logit_softcap):
  """As exact as the reference: on every row that sees a key, the kernel's float32 result is
  no further from the float64 value than twice the reference's own distance (plus 1e-6).
  Scores near a softcap of 50 carry rounding of ~5e-6 in both, in different places, so a
  fixed tolerance between the two would test the rounding rather than the kernel."""
  out = np.asarray(out, np.float32)
  assert np.isfinite(out).all()
  ref = np.asarray(attention_seam.attention(q, k, v, mask, logit_softcap, impl="reference"))
  real = _real_rows(mask)
  exact = _exact_attention(q, k, v, mask, logit_softcap)[real]
  ref_error = np.abs(ref[real] - exact).max()
  assert ref_error < 1e-4  # the oracle is the reference's definition
  assert np.abs(out[real] - exact).max() <= 2 * ref_error + 1e-6


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("window", [8, None], ids=["local8", "global"])
def test_attention_gemma2_layers(impl, window):
  # GQA 2 x 2, logit softcap 50 with scores large enough to bend, T = 40 not a whole number of
  # blocks, one row right-padded.
  q, k, v = _qkv(0, 2, 40, 2, 2, 16, q_scale=6.0)
  mask = _lm_mask(_padded((40, 29), 40), window)
  assert np.abs(np.einsum("btkgh,bskh->bkgts", q, k)).max() > 50  # the cap bites
  _check(attention_seam.attention(q, k, v, mask, 50.0, impl=impl, **TILES), q, k, v, mask, 50.0)


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("window", [8, None], ids=["local8", "global"])
@pytest.mark.parametrize("heads", [(1, 4), (2, 2)], ids=["mqa", "gqa"])
def test_attention_gemma3_layers(impl, window, heads):
  # No softcap; row 1 left-padded so its first query block holds no key at all.
  q, k, v = _qkv(1, 2, 48, *heads, 16)
  mask = _lm_mask(_padded((48, 25), 48, left=(1,)), window)
  _check(attention_seam.attention(q, k, v, mask, None, impl=impl, **TILES), q, k, v, mask, None)


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("window", [8, None], ids=["local8", "global"])
def test_attention_gemma4_wide_global_heads_with_k_equal_v(impl, window):
  """Gemma 4's global layers: heads twice as wide (32 here, 512 at full size), one KV head for
  four queries, scale 1 (q and k RMS-normed), values the scale-free-normed raw keys (K = V)."""
  rng = np.random.default_rng(5)
  norm = lambda x: x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)
  q = jnp.asarray(norm(rng.standard_normal((2, 40, 1, 4, 32))) * 1.3, jnp.float32)
  k_raw = rng.standard_normal((2, 40, 1, 32))
  k, v = jnp.asarray(norm(k_raw) * 0.9, jnp.float32), jnp.asarray(norm(k_raw), jnp.float32)
  mask = _lm_mask(_padded((40, 27), 40, left=(1,)), window)
  _check(attention_seam.attention(q, k, v, mask, None, impl=impl, **TILES), q, k, v, mask, None)


@pytest.mark.parametrize("impl", FUSED)
def test_gemma4_forward_through_fused_attention(impl, use_impl):
  """Every layer group of the dense Gemma 4 toy (16- and 32-wide heads, shared K/V) through a
  fused kernel equals the reference forward."""
  config = presets.toy_gemma4()
  params = model_lib.init_params(config, jax.random.PRNGKey(0), scale=0.1)
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 384, (2, 20)))
  mask = jnp.asarray(_padded((20, 13), 20, left=(1,)))
  want = model_lib.forward(params, config, tokens, mask)
  use_impl("attention", impl)
  got = model_lib.forward(params, config, tokens, mask)
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(np.asarray(got.residuals)[:, real], np.asarray(want.residuals)[:, real],
                             rtol=1e-4, atol=1e-4)


def test_fused_kernels_say_which_gemma4_heads_they_take():
  assert attention_mosaic.supports(512) and attention_mosaic.supports(256)
  assert attention_triton.supports(256) and not attention_triton.supports(512)


def _packed_mask(window):
  """The mask packed scoring builds: one item per row, positions restarting per choice, each
  choice seeing the context and itself (`scoring.packed_logprobs`); row 2 is batch padding."""
  items = [scoring.EncodedItem(tuple(range(2, 22)), ((30, 31, 32, 33, 34), (40, 41), (50,) * 12)),
           scoring.EncodedItem((2, 5, 6), ((7,) * 9, (8,) * 30))]
  batch = scoring.pack(items, batch_size=3)
  segments = batch.segments
  pair_mask = (segments[:, None, :] == 0) | (segments[:, None, :] == segments[:, :, None])
  return model_lib.attention_mask_for(jnp.asarray(batch.mask), jnp.asarray(batch.positions),
                                      window, jnp.asarray(pair_mask))


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("window", [8, None], ids=["local8", "global"])
def test_attention_packed_scoring_masks(impl, window):
  mask = _packed_mask(window)
  q, k, v = _qkv(2, 3, mask.shape[-1], 2, 2, 16, q_scale=3.0)
  _check(attention_seam.attention(q, k, v, mask, 50.0, impl=impl, **TILES), q, k, v, mask, 50.0)


@pytest.mark.parametrize("impl", FUSED)
def test_attention_padding_rows_are_finite(impl):
  # A row with no real token (the filler rows `sae_stats.language_sums` pads batches with)
  # and a row whose padding starts inside a block; large scores would overflow a naive exp.
  q, k, v = _qkv(3, 3, 32, 1, 2, 16, q_scale=30.0)
  mask = _lm_mask(_padded((32, 0, 19), 32), None)
  out = np.asarray(attention_seam.attention(q, k, v, mask, None, impl=impl, **TILES))
  assert np.isfinite(out).all()
  np.testing.assert_array_equal(out[1], 0.0)  # no key block visited: 0, not 0 / 0
  _check(out, q, k, v, mask, None)


@pytest.mark.parametrize("impl", FUSED)
def test_attention_bfloat16_stays_close(impl):
  # bf16 inputs: the kernels keep scores in float32 where the reference rounds them to bf16,
  # so they agree to bf16 precision, not bit for bit.
  q, k, v = _qkv(4, 2, 32, 2, 2, 16, q_scale=2.0, dtype=jnp.bfloat16)
  mask = _lm_mask(_padded((32, 20), 32), 8)
  ref = attention_seam.attention(q, k, v, mask, 50.0, impl="reference")
  out = attention_seam.attention(q, k, v, mask, 50.0, impl=impl, **TILES)
  assert out.dtype == jnp.bfloat16
  out = np.asarray(out, np.float32)
  assert np.isfinite(out).all()
  real = _real_rows(mask)
  np.testing.assert_allclose(out[real], np.asarray(ref, np.float32)[real], rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("impl", FUSED)
def test_attention_gradient_is_the_reference_gradient(impl):
  q, k, v = _qkv(5, 2, 24, 2, 2, 16, q_scale=3.0)
  mask = _lm_mask(_padded((24, 17), 24), 8)
  real = jnp.asarray(_padded((24, 17), 24))[:, :, None, None, None]

  def loss(impl):
    return lambda q, k, v: jnp.sum(
        real * attention_seam.attention(q, k, v, mask, 50.0, impl=impl, **TILES) ** 2)

  fused = jax.grad(loss(impl), argnums=(0, 1, 2))(q, k, v)
  ref = jax.grad(loss("reference"), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(fused, ref):  # float32 sums in another order: error relative to the scale
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5 * float(np.abs(b).max()))


@pytest.mark.parametrize("impl", FUSED)
def test_packed_scoring_through_fused_attention(impl, use_impl, toy_params, toy_config):
  # The toy Gemma 2 end to end (window 8, softcap, GQA) on packed multiple-choice rows.
  items = [scoring.EncodedItem(tuple(range(2, 30)), ((40, 41, 42), (50,) * 7, (60, 61))),
           scoring.EncodedItem((2, 9, 10, 11), ((70,) * 12, (71,)))]
  batch = scoring.pack(items, batch_size=2)
  arrays = [jnp.asarray(a) for a in (batch.tokens, batch.mask, batch.positions, batch.segments,
                                     batch.gather, batch.targets)]
  ref = np.asarray(scoring.packed_logprobs(toy_params, toy_config, *arrays))
  use_impl("attention", impl)
  out = np.asarray(scoring.packed_logprobs(toy_params, toy_config, *arrays))
  real = batch.choice >= 0
  np.testing.assert_allclose(out[real], ref[real], rtol=1e-4, atol=1e-5)


# ---- SAE statistics ----------------------------------------------------------------------------

def _encoder(params):
  """The seam takes the encoder as plain arrays."""
  return params.W_enc, params.b_enc, params.threshold


def _dyadic_sae(seed, B, T, D, W, dtype):
  """Inputs on coarse binary grids: every product and sum is exact in float32 (and the inputs
  exact in bf16), so pre-activations are bit-identical in any summation order, and thresholds
  on the same grid make exact ties `pre == threshold` (strict >: not active)."""
  rng = np.random.default_rng(seed)
  x = rng.integers(-4, 5, (B, T, D)) / 8
  params = jumprelu.JumpReLUParams(
      W_enc=jnp.asarray(rng.integers(-4, 5, (D, W)) / 16, dtype),
      b_enc=jnp.asarray(rng.integers(-8, 9, W) / 64, dtype),
      threshold=jnp.asarray(rng.integers(0, 32, W) / 64, dtype),
      W_dec=jnp.zeros((W, D), dtype), b_dec=jnp.zeros(D, dtype))
  weights = (rng.random((B, T)) < 0.8).astype(np.float32)
  return jnp.asarray(x, jnp.float32), params, jnp.asarray(weights)


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_sae_stats_exact_on_exact_arithmetic(impl, dtype):
  x, params, weights = _dyadic_sae(0, 2, 40, 64, 256, dtype)  # T = 40: a partial token block
  pre = np.asarray(jumprelu.pre_activations(params, x))
  assert (pre == np.asarray(params.threshold, np.float32)).sum() > 20  # ties are exercised
  ref = sae_stats_seam.sae_stats(x, *_encoder(params), weights, impl="reference")
  out = sae_stats_seam.sae_stats(x, *_encoder(params), weights, impl=impl, **SAE_TILES[impl])
  for a, b in zip(out, ref):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("impl", FUSED)
def test_sae_stats_random_inputs(impl):
  params = jumprelu.random_params(jax.random.PRNGKey(0), 64, 256)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 24, 64))
  weights = jnp.asarray(_padded((24, 10, 0), 24), jnp.float32)
  mass_ref, fired_ref = sae_stats_seam.sae_stats(x, *_encoder(params), weights, impl="reference")
  mass, fired = sae_stats_seam.sae_stats(x, *_encoder(params), weights, impl=impl, **SAE_TILES[impl])
  np.testing.assert_array_equal(np.asarray(fired), np.asarray(fired_ref))  # same active sets
  np.testing.assert_allclose(np.asarray(mass), np.asarray(mass_ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", FUSED)
def test_sae_stats_gradient_is_the_reference_gradient(impl):
  # The LoRA objective differentiates the code mass with respect to the residuals.
  params = jumprelu.random_params(jax.random.PRNGKey(2), 64, 256)
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 16, 64))
  weights = jnp.asarray(_padded((16, 9), 16), jnp.float32)

  def mass(impl, tiles):
    return lambda x: sae_stats_seam.sae_stats(x, *_encoder(params), weights, impl=impl, **tiles)[0].sum()

  np.testing.assert_allclose(np.asarray(jax.grad(mass(impl, SAE_TILES[impl]))(x)),
                             np.asarray(jax.grad(mass("reference", {}))(x)), rtol=1e-6)


@pytest.mark.parametrize("impl", FUSED)
def test_batch_stats_through_fused_sae_stats(impl, use_impl, toy_params, toy_config):
  # The analysis step end to end: SAE encode inside the layer scan, every statistic. The toy
  # SAE width 256 is two of the kernels' default 128-feature blocks (Triton; Mosaic 256 = one).
  saes = jumprelu.random_params(jax.random.PRNGKey(4), toy_config.d_model, 256,
                                n_layers=toy_config.n_layers, input_std=2.0)
  tokens = jnp.asarray(np.random.default_rng(5).integers(4, 500, (2, 24)))
  mask = jnp.asarray(_padded((24, 15), 24))
  ref = sae_stats.batch_stats(toy_params, toy_config, saes, tokens, mask)
  use_impl("sae_stats", impl)
  out = sae_stats.batch_stats(toy_params, toy_config, saes, tokens, mask)
  for key in ("l0", "distinct_features", "feature_counts"):
    np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(ref[key]), err_msg=key)
  for key in ("activation", "resid_norm"):
    np.testing.assert_allclose(np.asarray(out[key]), np.asarray(ref[key]), rtol=1e-5,
                               err_msg=key)


# ---- lowering for the accelerators, and the choice -------------------------------------------

_TARGETS = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


def _lowers_for(platform, fn, *shapes):
  """Export `fn` for `platform` (no device needed): the kernel lowers to Triton or Mosaic IR."""
  check = export.DisabledSafetyCheck.custom_call(_TARGETS[platform])
  text = export.export(jax.jit(fn), platforms=[platform], disabled_checks=[check])(
      *shapes).mlir_module()
  assert _TARGETS[platform] in text


@pytest.mark.parametrize("platform,kernel", [("cuda", attention_triton),
                                             ("tpu", attention_mosaic)])
@pytest.mark.parametrize("preset", ["gemma2_2b", "gemma3_1b"])
def test_attention_lowers_at_gemma_shapes(platform, kernel, preset):
  c = presets.preset(preset)
  B, T, K, G, H = 4, 256, c.n_kv_heads, c.n_heads // c.n_kv_heads, c.head_dim
  q = jax.ShapeDtypeStruct((B, T, K, G, H), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((B, T, K, H), jnp.bfloat16)
  mask = jax.ShapeDtypeStruct((B, 1, 1, T, T), jnp.bool_)
  _lowers_for(platform, lambda q, k, v, m: kernel.attention(q, k, v, m, c.attn_logit_softcap),
              q, kv, kv, mask)


def test_attention_lowers_at_gemma4_global_shape_for_tpu():
  c = presets.gemma4_31b()
  B, T, K, H = 2, 256, c.kind_kv_heads(1), c.kind_head_dim(1)
  assert (K, H) == (4, 512) and c.attention_kinds[1].window is None
  q = jax.ShapeDtypeStruct((B, T, K, c.n_heads // K, H), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((B, T, K, H), jnp.bfloat16)
  mask = jax.ShapeDtypeStruct((B, 1, 1, T, T), jnp.bool_)
  _lowers_for("tpu", lambda q, k, v, m: attention_mosaic.attention(q, k, v, m, None), q, kv, kv,
              mask)


@pytest.mark.parametrize("platform,kernel", [("cuda", sae_triton), ("tpu", sae_mosaic)])
def test_sae_stats_lowers_at_gemma_scope_shape(platform, kernel):
  params = jax.eval_shape(lambda: jumprelu.random_params(
      jax.random.PRNGKey(0), 2304, 16384, dtype=jnp.bfloat16))
  _lowers_for(platform, kernel.sae_stats, jax.ShapeDtypeStruct((4, 256, 2304), jnp.bfloat16),
              *_encoder(params), jax.ShapeDtypeStruct((4, 256), jnp.float32))


def test_auto_choice_per_platform(monkeypatch):
  always = lambda name: True
  assert select.resolve("attention", "auto", always) == "reference"  # CPU
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax, "device_count", lambda: 1)
  # Not yet compiled on real hardware: auto keeps the reference until a backend is validated.
  assert select.resolve("attention", "auto", always) == "reference"
  monkeypatch.setattr(select, "VALIDATED", frozenset({"gpu", "tpu"}))
  monkeypatch.setattr(jax, "device_count", lambda: 1)
  assert select.resolve("attention", "auto", always) == "pallas_triton"
  assert select.resolve("sae_stats", "auto", lambda name: False) == "reference"
  assert select.resolve("sae_stats", "reference", always) == "reference"
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert select.resolve("sae_stats", "auto", always) == "pallas_mosaic"
  monkeypatch.setattr(jax, "device_count", lambda: 8)  # a mesh: the kernels are not partitioned
  assert select.resolve("attention", "auto", always) == "reference"


def test_bad_choices_are_errors():
  with pytest.raises(ValueError, match="impl 'triton'"):
    select.set_impl("attention", "triton")
  with pytest.raises(ValueError, match="unknown kernel"):
    select.set_impl("matmul", "reference")
  with pytest.raises(ValueError, match="power-of-two head_dim"):
    attention_triton.attention(*_qkv(0, 1, 16, 1, 1, 24), jnp.ones((1, 1, 1, 16, 16), bool), None)
