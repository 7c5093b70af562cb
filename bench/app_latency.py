"""Review app latency: from uploading a query photo to its candidates shown, on a generated gallery of
1,000 images (200 individuals x 5 photos), CPU only, measured after start-up. Targets: < 2 s with the
global method, < 5 s with fusion (the gallery's union fusion, fitted when the demo gallery is built).

Two timings per query, median and max over the queries:
- `browser`: headless Chromium drives the real `wildreid app`: file chosen -> uploaded -> "Find candidates"
  -> all candidate texts and pictures on screen (needs chromium + chromedriver, see `make install-browser`).
- `session`: `ReviewSession.read_photos` + `propose` in this process (the server's share of the above).

    python bench/app_latency.py [--individuals 200 --images 5 --queries 8 --output bench/results/app_latency.json]

Queries are unseen photos of gallery individuals. The model is an untrained EfficientNet-Lite0 at 224 px
(the embedding cost of a real one; its candidates are not accurate). Writes JSON with the git commit.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.common import hardware  # noqa: E402
from wildreid.identification.review import ReviewSession, load_model_embedder  # noqa: E402
from wildreid.identification.review.demo_gallery import build_demo_gallery  # noqa: E402
from wildreid.provenance import code_version  # noqa: E402

TARGETS_S = {"global": 2.0, "fusion": 5.0}


def summary(seconds: list[float]) -> dict:
    return {"median_s": round(statistics.median(seconds), 3), "max_s": round(max(seconds), 3),
            "runs": [round(s, 3) for s in seconds]}


def session_latency(gallery: Path, embedder, method: str, queries: list[Path], top_k: int) -> tuple[dict, float]:
    start = time.perf_counter()
    session = ReviewSession(gallery, *embedder, method=method, top_k=top_k, review_dir=gallery.parent / "review")
    startup = time.perf_counter() - start
    session.propose(session.read_photos([queries[0]]))  # warm-up: first calls allocate and load lazily
    times = []
    for query in queries:
        start = time.perf_counter()
        session.propose(session.read_photos([query]))
        times.append(time.perf_counter() - start)
    return summary(times), startup


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def browser_latency(gallery: Path, method: str, queries: list[Path], top_k: int) -> tuple[dict, float]:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    started = time.perf_counter()
    log = gallery.parent / f"app_{method}.log"
    with open(log, "w") as handle:
        server = subprocess.Popen([sys.executable, "-m", "wildreid.identification.cli", "app", "--gallery", str(gallery),
                                   "--port", str(port), "--method", method, "--top_k", str(top_k), "--review_dir",
                                   str(gallery.parent / "review")], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1700"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None or time.perf_counter() - started > 600:
                raise RuntimeError(f"wildreid app ({method}) did not start")
            time.sleep(0.2)
        startup = time.perf_counter() - started
        shown = f"""return document.querySelector('#status').innerText.includes('candidates for') &&
            [...Array({top_k}).keys()].every(i => ['pair', 'match'].every(p => {{
                const image = document.querySelector(`#candidate-${{i}}-${{p}} img`);
                return image && image.complete && image.naturalWidth > 0; }}));"""
        times = []
        for query in [queries[0], *queries]:  # the first one warms up the server and the page
            driver.get(f"http://127.0.0.1:{port}/")
            upload = WebDriverWait(driver, 60).until(
                lambda d: d.find_element(By.CSS_SELECTOR, "#query-files input[type=file]"))
            find = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#find"))  # page ready
            start = time.perf_counter()
            upload.send_keys(str(query))
            WebDriverWait(driver, 60).until(lambda d: query.stem in d.find_element(By.CSS_SELECTOR, "#query-files").text)
            find.click()
            try:
                WebDriverWait(driver, 120, poll_frequency=0.02).until(lambda d: d.execute_script(shown))
            except TimeoutException:
                status = driver.find_element(By.CSS_SELECTOR, "#status").text
                raise RuntimeError(f"{query}: candidates not shown after 120 s; status {status!r}; "
                                   f"app log: {log.read_text()[-3000:]}") from None
            times.append(time.perf_counter() - start)
        return summary(times[1:]), startup
    finally:
        driver.quit()
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--individuals", type=int, default=200)
    parser.add_argument("--images", type=int, default=5, help="gallery photos per individual")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=["global", "fusion"], choices=["global", "fusion"])
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "app_latency.json")
    args = parser.parse_args()
    version = code_version()  # before the run: the code that produced these numbers
    machine = hardware()  # with the load from other processes at the start

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        built = build_demo_gallery(Path(folder), args.individuals, args.images, image_size=192,
                                   model_image_size=224, held_out_per_identity=1)
        build_s = time.perf_counter() - start
        step = max(1, len(built["queries"]) // args.queries)
        queries = built["queries"][::step][: args.queries]
        embedder = load_model_embedder(str(built["model"]))
        have_browser = all(shutil.which(tool) for tool in ("chromium", "chromedriver"))
        results = {}
        for method in args.methods:
            session, session_startup = session_latency(built["gallery"], embedder, method, queries, args.top_k)
            results[method] = {"session": session, "session_startup_s": round(session_startup, 2),
                               "target_s": TARGETS_S[method]}
            if have_browser:
                browser, browser_startup = browser_latency(built["gallery"], method, queries, args.top_k)
                results[method].update(browser=browser, app_startup_s=round(browser_startup, 2),
                                       meets_target=browser["max_s"] < TARGETS_S[method])
            print(f"{method:7s} session median {session['median_s']:.3f} s (max {session['max_s']:.3f})"
                  + (f" | browser upload->candidates median {results[method]['browser']['median_s']:.3f} s "
                     f"(max {results[method]['browser']['max_s']:.3f}), target < {TARGETS_S[method]} s"
                     if have_browser else " | browser: chromium not installed, not measured"))
        gallery_images = args.individuals * args.images
    report = {
        "benchmark": "app_latency", **version, "gallery_images": gallery_images,
        "individuals": args.individuals, "queries": len(queries), "top_k": args.top_k,
        "model": "untrained tf_efficientnet_lite0 at 224 px", "gallery_build_s": round(build_s, 1),
        "hardware": machine, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "results": results,
        "command": "python bench/app_latency.py " + " ".join(sys.argv[1:]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
