"""Risk models: ONNX files with their feature specs, and the code that trains and exports them."""
