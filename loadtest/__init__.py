"""Load tests as a product: a seeded synthetic fleet with ground truth, a fast OTLP sender, and
an accuracy and speed report. Imports only ``schemas`` and ``store``; the CLI
(`driftline loadtest`, `record`, `replay`) wires it to a running pipeline."""
