"""`python -m belusim.calibration ...` runs the same commands as `belusim calibrate ...`."""

from belusim.calibration.cli import calibrate_app

if __name__ == "__main__":
    calibrate_app(prog_name="belusim calibrate")
