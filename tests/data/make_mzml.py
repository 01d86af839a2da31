"""Regenerate tests/data/tiny.mzML with psims: one MS1 scan and two MS2 scans (HCD positive, CID
negative; the second MS2 scan has a zero-intensity peak). Run: python tests/data/make_mzml.py"""
from pathlib import Path

import numpy as np
from psims.mzml.writer import MzMLWriter

OUT = Path(__file__).with_name("tiny.mzML")


def main() -> None:
    with MzMLWriter(open(OUT, "wb"), close=True) as w:
        w.controlled_vocabularies()
        w.file_description(["MS1 spectrum", "MSn spectrum"])
        w.software_list([{"id": "psims-writer", "version": "1.0", "params": ["python-psims"]}])
        w.data_processing_list([{"id": "DP1", "processing_methods": [
            {"order": 0, "software_reference": "psims-writer", "params": ["Conversion to mzML"]}]}])
        with w.run(id="run1"):
            with w.spectrum_list(count=3):
                w.write_spectrum(np.array([100.0, 200.0, 300.5]), np.array([10.0, 20.0, 30.0]), id="scan=1",
                                 params=["MS1 spectrum", {"ms level": 1}, "positive scan", "centroid spectrum"],
                                 scan_start_time=0.5)
                w.write_spectrum(np.array([50.1, 75.25, 120.0]), np.array([5.0, 100.0, 0.0]), id="scan=2",
                                 params=["MSn spectrum", {"ms level": 2}, "positive scan", "centroid spectrum"],
                                 scan_start_time=0.6,
                                 precursor_information={"mz": 195.0877, "intensity": 1e5, "charge": 1,
                                                        "scan_id": "scan=1",
                                                        "activation": ["beam-type collision-induced dissociation",
                                                                       {"collision energy": 30.0}]})
                w.write_spectrum(np.array([60.5, 61.0]), np.array([7.0, 3.0]), id="scan=3",
                                 params=["MSn spectrum", {"ms level": 2}, "negative scan", "centroid spectrum"],
                                 scan_start_time=0.7,
                                 precursor_information={"mz": 180.0655, "charge": -1, "scan_id": "scan=1",
                                                        "activation": ["collision-induced dissociation",
                                                                       {"collision energy": 20.0}]})


if __name__ == "__main__":
    main()
