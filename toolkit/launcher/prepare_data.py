"""``make prepare-data``: scan a recipe's data once, before a large or multi-host run.

    python -m toolkit.launcher.prepare_data --recipe=image [--key=value ...]

Runs the recipe's data checks with ``rescan_data`` on: the data source is listed and
checked again (an image folder's files opened, a TFRecord set's records counted) and its
manifest rewritten in ``cache_dir/manifests`` (see toolkit.manifests). Launches and
workers then read the manifest instead of the files. Run it on every host whose
``cache_dir`` is not shared, with the same ARGS as the training run.
"""

import argparse
import sys
import time

from toolkit import config as config_lib
from toolkit import errors
from toolkit import log_noise
from toolkit import manifests
from toolkit import recipe as recipe_lib


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.launcher.prepare_data",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True)
    options, overrides = parser.parse_known_args(argv)
    log_noise.set_level(False)
    started = time.monotonic()
    try:
        with log_noise.hidden(False):
            recipe = recipe_lib.get(options.recipe)
            values = dict(config_lib.split_overrides(overrides), rescan_data="true")
            config = config_lib.build(recipe.config_class, values)
            if recipe.check_data is None:
                print(f"recipe {recipe.name} has no data to scan")
                return 0
            recipe.check_data(config)
    except errors.UserError as error:
        return errors.report(error)
    written = manifests.WRITTEN or ["none: this data source has no manifest (it is small "
                                    "or packaged)"]
    print(f"prepared the {recipe.name} data in {time.monotonic() - started:.1f} s; "
          "manifests: " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
