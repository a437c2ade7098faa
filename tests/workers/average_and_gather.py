"""Run under horovodrun by tests/test_local_sgd.py; prints one JSON line per rank.

Each rank holds a float variable and a counter of its own values and a few integers to
share; distributed.average_variables_gathering averages the first, gives every rank rank
0's counter and every rank's integers, in one round of collectives.
"""

import json

import toolkit  # noqa: F401
import tensorflow as tf

from toolkit.worker import distributed


def main():
    world = distributed.init()
    rank = world.rank
    weights = tf.Variable([rank + 1.0, 2.0 * (rank + 1), 10.0])
    counter = tf.Variable(100 + rank, dtype=tf.int64)
    averaged, shares = distributed.average_variables_gathering([weights, counter],
                                                               (rank, 7 * rank))
    print("RESULT " + json.dumps({"rank": rank, "weights": weights.numpy().tolist(),
                                  "counter": int(counter.numpy()), "shares": shares,
                                  "bytes": averaged}), flush=True)


if __name__ == "__main__":
    main()
