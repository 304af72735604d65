"""lminima.study.config: a misspelt field of the study config from Python."""

import copy

from absl.testing import absltest

from lminima import configs
from lminima.study import config as study_config
from lminima.study import sweep


def _set_attribute(config):
  config.num_seed = 3


def _set_item(config):
  config["num_seed"] = 3


def _get_attribute(config):
  return config.num_seed


def _get_item(config):
  return config["num_seed"]


class UnknownFieldTest(absltest.TestCase):

  def assert_one_short_line(self, error, *names):
    message = str(error)
    self.assertLess(len(message), 200, message)
    self.assertNotIn("\n", message)
    self.assertStartsWith(message, "unknown config field ")
    for name in names:
      self.assertIn(repr(name), message)

  def test_misspelt_field_is_one_line_with_the_closest_names(self):
    for config in (sweep.get_config(), configs.load("digits"),
                   copy.deepcopy(sweep.get_config())):
      # What ml_collections raises: AttributeError for attributes, KeyError
      # for items (existing handlers keep working).
      for access, kind in ((_set_attribute, AttributeError),
                           (_set_item, KeyError),
                           (_get_attribute, AttributeError),
                           (_get_item, KeyError)):
        with self.assertRaises(kind) as caught:
          access(config)
        self.assertIsInstance(caught.exception,
                              study_config.UnknownFieldError)
        self.assert_one_short_line(caught.exception, "num_seed", "num_seeds")

  def test_without_a_close_name(self):
    config = sweep.get_config()
    with self.assertRaises(AttributeError) as caught:
      config.zzzz = 1
    self.assert_one_short_line(caught.exception, "zzzz")
    # A nested config with few fields lists them all.
    config = configs.load("synthetic")
    config.data_options.lock()  # as --config files are (lock_config=True)
    with self.assertRaises(AttributeError) as caught:
      config.data_options.colour = 1
    self.assert_one_short_line(caught.exception, "colour", "d_x", "d_y", "m",
                               "seed")

  def test_the_config_otherwise_behaves_as_a_config_dict(self):
    config = sweep.get_config()
    self.assertFalse(hasattr(config, "num_seed"))
    self.assertEqual(config.get("num_seed", 7), 7)
    self.assertNotIn("num_seed", config)
    config.num_seeds = 5
    self.assertEqual((config.num_seeds, config["num_seeds"]), (5, 5))
    with config.unlocked():
      config.num_seed = 2
    self.assertEqual(config.num_seed, 2)
    self.assertEqual(copy.deepcopy(config).to_dict(), config.to_dict())


if __name__ == "__main__":
  absltest.main()
