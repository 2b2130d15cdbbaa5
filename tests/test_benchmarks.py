"""The benchmarks run on a CPU with tiny settings and print the JSON they promise (no timing asserted)."""


def test_throughput_benchmark_smoke(class_folder_competition, benchmark):
    result = benchmark("throughput.py", "--competition", class_folder_competition(per_class=16),
                       "--models", "resnet10t", "--size", "16", "--batch", "8", "--epochs", "2",
                       "--steps", "2", "--augment-on", "device")
    assert result["augment_on"] == "device"
    numbers = result["models"]["resnet10t"]
    assert set(numbers) == {"harness_img_s", "ceiling_img_s", "seed_img_s", "a_over_b", "a_over_c"}
    assert all(v > 0 for v in numbers.values())


def test_search_speed_benchmark_smoke(class_folder_competition, benchmark):
    result = benchmark("search_speed.py", "--competition", class_folder_competition(), "--trials", "2")
    assert result["without"]["pruner"] == "none" and result["with"]["pruner"] == "median"
    assert result["without"]["complete"] == 2 and "time_ratio" in result
    # the pruned search's best came within reach during its own run, or never
    assert result["reach_ratio"] is None or 0 < result["reach_ratio"] <= result["time_ratio"] + 0.05


def test_search_quality_benchmark_smoke(class_folder_competition, benchmark):
    result = benchmark("search_quality.py", "--competition", class_folder_competition(), "--trials", "2")
    (row,) = result["results"]
    assert row["recipe"] == "scratch_small" and row["trials"] == 2
    assert row["best_cv"] is not None and row["recipe_cv"] is not None
    assert row["best_cv"] >= row["recipe_cv"]  # accuracy: the best of the search includes the recipe


def test_label_shift_benchmark_smoke(class_folder_competition, benchmark):
    result = benchmark("label_shift.py", "--competition", class_folder_competition(), "--trials", "1")
    (row,) = result["results"]
    (head,) = row["heads"]
    assert head["train"] == [0.5, 0.5] and len(head["simulation"]) == 3
    assert {"mix", "prior_error", "off", "on"} == set(head["simulation"][0])


def test_test_images_benchmark_smoke(class_folder_competition, benchmark):
    result = benchmark("test_images.py", "--competition", class_folder_competition(per_class=16, n_test=40),
                       "--trials", "1", "--set", "search.steps=[60]", "--set", "search.augment=[none]",
                       "--set", "orientation=fixed")  # the fixture's classes are mirror images
    (row,) = result["results"]
    assert row["before"]["members"] == [0] and row["trials"] == 1
    pseudo = row["pseudo"]  # an easy task: the ensemble is sure of most test images
    assert pseudo["test_images_a_fold"] > 10 and pseudo["reruns"][0]["of"] == 0
    assert pseudo["reruns"][0]["cv_after"] is not None
    assert set(pseudo["after"]) >= {"ensemble_oof", "members", "pseudo_members"}
