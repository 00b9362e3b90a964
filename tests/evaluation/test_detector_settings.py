"""The detector's config keys (data.window_stats, data.baseline, data.model_features) are validated and set the
model's input width."""

import pytest

from services.config import ConfigError, load_settings


@pytest.mark.parametrize("env,key", [
    ({"FEDAD__DATA__MODEL_FEATURES": "[Pressure, Humidity]"}, "data"),
    ({"FEDAD__DATA__WINDOW_STATS": "[mean, mean]"}, "data"),
    ({"FEDAD__DATA__WINDOW_STATS": "[median]"}, "data.window_stats"),
    ({"FEDAD__DATA__BASELINE": "session"}, "data.baseline"),
])
def test_bad_detector_settings_name_the_key(env, key):
    with pytest.raises(ConfigError, match=key):
        load_settings(environ=env)


def test_input_width_follows_model_features_and_window_stats():
    s = load_settings(environ={"FEDAD__DATA__MODEL_FEATURES": "[Pressure, Current]",
                               "FEDAD__DATA__WINDOW_STATS": "[mean, slope]", "FEDAD__DATA__WINDOW": "7"})
    assert s.input_width == 2 * 2
    flat = load_settings(environ={"FEDAD__DATA__MODEL_FEATURES": "null", "FEDAD__DATA__WINDOW_STATS": "[]",
                                  "FEDAD__DATA__WINDOW": "3"})
    assert flat.input_width == 3 * len(flat.data.features)
