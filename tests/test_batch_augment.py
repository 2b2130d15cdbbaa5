"""The batch forms of the augmentation policies (float N×C×H×W batches in [0, 1], drawn from the
generator they are passed): what a training run relies on. `tests/test_feed.py` covers them inside
the device-batch pipeline."""
import pytest
import torch
import torch.nn.functional as F

from harness.training.augment import (AUGMENTS, HEAVY, MEDIUM, batch_affine, batch_colour, batch_form, batch_holes,
                                      batch_noise, random_d4)

POLICIES = [policy for policy in AUGMENTS if batch_form(policy) is not None]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def d4_views(x: torch.Tensor):
    """The 8 flips/rotations of an N×C×H×W batch; 0 is the batch itself, 4 its left ↔ right mirror."""
    return [torch.rot90(flipped, k, (2, 3)) for flipped in (x, x.flip(3)) for k in range(4)]


def smooth_images(n: int, size: int = 32, channels: int = 1) -> torch.Tensor:
    """Random images without any symmetry, smooth enough to survive a small affine jitter."""
    coarse = torch.rand(n, channels, 4, 4, generator=gen(n))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def nearest_view(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Per image, which of the 8 views of `x` `out` correlates with best."""
    def centred(t):
        t = t.flatten(1)
        return (t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + 1e-8)
    scores = torch.stack([(centred(view) * centred(out)).mean(1) for view in d4_views(x)], 1)
    return scores.argmax(1)


def exact_view(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Per image, the index of the view of `x` that `out` equals exactly (-1: none)."""
    found = torch.full((len(x),), -1)
    for k, view in reversed(list(enumerate(d4_views(x)))):
        found[(view == out).flatten(1).all(1)] = k
    return found


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("orientation", ["fixed", "hflip", "free"])
@pytest.mark.parametrize("shape", [(6, 3, 16, 16), (6, 1, 12, 20)])
def test_batch_forms_keep_shape_dtype_and_range(policy, orientation, shape):
    out = batch_form(policy)(torch.rand(shape, generator=gen(0)), orientation, gen(1))
    assert out.shape == shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("policy", ["light", "medium"])  # heavy's noise and holes blur the comparison
def test_fixed_orientation_never_flips_or_turns(policy):
    x = smooth_images(200)
    out = batch_form(policy)(x.clone(), "fixed", gen(1))
    if policy == "light":
        assert torch.equal(out, x)
    else:  # the affine jitter moves pixels a little, but each image stays nearest to itself
        assert torch.equal(nearest_view(x, out), torch.zeros(len(x), dtype=torch.long))


def test_hflip_orientation_only_mirrors_left_right():
    x = torch.rand(400, 1, 6, 6, generator=gen(2))
    used = exact_view(x, batch_form("light")(x.clone(), "hflip", gen(2)))
    assert set(used.tolist()) == {0, 4}
    assert 120 < int((used == 4).sum()) < 280


def test_free_orientation_draws_all_eight_views_about_equally():
    x = torch.rand(1600, 1, 6, 6, generator=gen(3))
    used = exact_view(x, batch_form("light")(x.clone(), "free", gen(3)))
    counts = torch.bincount(used.clamp(min=0), minlength=8)
    assert int((used < 0).sum()) == 0, "every output is an exact flip/rotation of its input"
    assert int(counts.min()) > 120 and int(counts.max()) < 280, counts  # 200 expected of each
    medium = nearest_view(smooth_images(400), batch_form("medium")(smooth_images(400), "free", gen(3)))
    assert set(medium.tolist()) == set(range(8))


def test_free_orientation_on_non_square_images_mirrors_both_ways():
    x = torch.rand(400, 1, 4, 6, generator=gen(4))
    out = random_d4(x.clone(), gen(4))
    views = [x, x.flip(3), x.flip(2), x.flip(2).flip(3)]
    used = torch.stack([(v == out).flatten(1).all(1) for v in views], 1)
    assert bool(used.any(1).all()) and bool(used.any(0).all())


def test_d4_only_for_the_given_rows():
    x = torch.rand(200, 1, 5, 5, generator=gen(5))
    rows = torch.arange(200) % 2 == 0
    out = random_d4(x.clone(), gen(5), rows)
    assert torch.equal(out[~rows], x[~rows])
    assert int((exact_view(x[rows], out[rows]) > 0).sum()) > 70
    assert torch.equal(random_d4(x.clone(), gen(5), torch.zeros(200, dtype=torch.bool)), x)


def test_none_policy_and_zero_probabilities_leave_images_unchanged():
    x = torch.rand(32, 3, 16, 16, generator=gen(6))
    assert torch.equal(batch_form("none")(x.clone(), "free", gen(6)), x)
    assert torch.allclose(batch_affine(x.clone(), dict(MEDIUM, affine_p=0.0), "free", gen(6)), x, atol=1e-5)
    assert torch.equal(batch_colour(x.clone(), dict(HEAVY, colour_p=0.0), gen(6)), x)
    assert torch.equal(batch_noise(x.clone(), dict(HEAVY, noise_p=0.0), gen(6)), x)
    assert torch.equal(batch_holes(x.clone(), dict(HEAVY, holes_p=0.0), gen(6)), x)


def test_each_transform_changes_about_its_share_of_images():
    x = smooth_images(2000, size=16, channels=3) * 0.8 + 0.1  # no clamping at 0 or 1
    for name, transform, p in [
            ("affine", lambda t: batch_affine(t, MEDIUM, "fixed", gen(7)), MEDIUM["affine_p"]),
            ("colour", lambda t: batch_colour(t, MEDIUM, gen(7)), MEDIUM["colour_p"]),
            ("noise", lambda t: batch_noise(t, HEAVY, gen(7)), HEAVY["noise_p"]),
            ("holes", lambda t: batch_holes(t, HEAVY, gen(7)), HEAVY["holes_p"])]:
        changed = (transform(x.clone()) - x).abs().flatten(1).amax(1) > 1e-4  # 1e-4: grid_sample's rounding
        assert abs(float(changed.float().mean()) - p) < 0.05, name


def test_holes_cut_zero_patches_of_the_table_size():
    x = torch.rand(1000, 1, 40, 40, generator=gen(8)) * 0.5 + 0.5  # no pixel is 0 before the holes
    out = batch_holes(x.clone(), HEAVY, gen(8))
    zeros = (out == 0).flatten(1).sum(1)
    assert torch.equal(out[out != 0], x[out != 0])  # only zeros are written
    low, high = HEAVY["hole_size"]
    assert int(zeros.max()) <= HEAVY["holes"][1] * int(high * 40) ** 2
    assert int(zeros[zeros > 0].min()) >= int(low * 40) ** 2


@pytest.mark.parametrize("policy", POLICIES)
def test_the_same_seed_repeats_the_same_batch(policy):
    x = torch.rand(16, 3, 12, 12, generator=gen(9))
    runs = [batch_form(policy)(x.clone(), "free", gen(seed)) for seed in (11, 11, 12)]
    assert torch.equal(runs[0], runs[1])
    if policy != "none":
        assert not torch.equal(runs[0], runs[2])
