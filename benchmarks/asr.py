"""ASR reward benchmark: responses/s of the asr_consistency reward (rewards/asr.py: the batch
transcribed by the built-in PocketSphinx recogniser, WER against each text, the scale) against the
bare recogniser transcribing the same audio (the baseline), in one run on the same utterances:
sentences synthesized by flite (16 kHz voices), each scored once against its own text.

Prints responses/s of both, the ratio (the reward adds only the WER: ~1 but for noise), and
the real-time factor (seconds of compute per second of speech). Usage:
    .venv/bin/python benchmarks/asr.py [--utterances 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# Run as a script, this file's folder leads sys.path, where learner.py would shadow the `learner` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

VOICES = ("slt", "awb", "rms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from rewards.asr import AsrConsistency, PocketSphinxRecognizer
    from rewards.types import ScoredResponse
    from wavalign.speech.synthesize import SAMPLE_SENTENCES, available, synthesize

    if not available("flite"):
        sys.exit("error: flite is not installed (apt-get install flite, or scripts/install.sh as root)")
    pairs = [(text, voice) for voice in VOICES for text in SAMPLE_SENTENCES]
    pairs = (pairs * (1 + args.utterances // len(pairs)))[: args.utterances]
    speech = [(text, synthesize(text, voice)) for text, voice in pairs]
    responses = [ScoredResponse("q", text, audio) for text, audio in speech]
    audios = [audio for _, audio in speech]
    seconds = sum(audio.seconds for audio in audios)

    recognizer = PocketSphinxRecognizer()
    reward = AsrConsistency(recognizer, 1.0, 5.0, 1.0)
    recognizer.transcribe(audios[:2]), reward(responses[:2])  # warm-up
    bare, scored = [], []
    for _ in range(args.repeats):  # alternating, so machine noise hits both alike
        started = time.perf_counter()
        recognizer.transcribe(audios)
        bare.append(len(audios) / (time.perf_counter() - started))
        started = time.perf_counter()
        scores = reward(responses)
        scored.append(len(responses) / (time.perf_counter() - started))
    b, r = statistics.median(bare), statistics.median(scored)
    mean = statistics.mean(scores)
    print(f"{len(audios)} utterances, {seconds:.1f} s of speech; mean score against their own text {mean:.2f}")
    factor = len(audios) / b / seconds
    print(f"bare recogniser: {b:.2f} responses/s (real-time factor {factor:.3f}); asr_consistency: {r:.2f} responses/s")
    print(f"asr_consistency / bare recogniser responses/s = {r / b:.3f}")


if __name__ == "__main__":
    main()
