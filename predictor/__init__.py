"""Next-agent prediction: features, history and context models, fusion, forecasts."""
