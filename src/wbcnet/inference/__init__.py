"""Running a model: from pictures to typed records.

    runner.py      the one inference path: batches through the model (bf16, TTA), features, shift scores
    predict.py     `wbcnet predict`: single-cell pictures -> PredictResult
    count.py       `wbcnet count`: whole fields -> found cells, their classes, the differential
    calibration.py temperature scaling and calibration error
    explain.py     Grad-CAM and attention maps
    export.py      ONNX export and the ONNX Runtime backend
    lab_cells.py   a lab's unlabelled cells read from its pictures or fields
runner, predict and count never import render/ (the commands draw what they return).
"""
