"""MLflow models-from-code entry of the served re-ID model; MLflow runs this file, the library never imports it.

When MLflow loads a registered ``anet-<dataset>`` model (``mlflow models serve``,
``mlflow.pyfunc.load_model``) it puts the model's ``code/`` folder (this package) on ``sys.path`` and
executes this file, which hands it a :class:`ServedReid`; ``load_context`` builds the
:class:`~anet.search.predictor.ReidPredictor` from the model's artifacts. Logged by
:func:`anet.search.served.log_served_model`.

Example (a served model, JSON over HTTP; binary columns travel base64-encoded)::

    mlflow models serve -m models:/anet-synthetic@champion --env-manager local -p 5001
    curl -X POST localhost:5001/invocations -H 'Content-Type: application/json' \\
         -d '{"dataframe_split": {"columns": ["image"], "data": [["<base64 of a JPEG>"]]}}'
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from anet.errors import UserError
from anet.search.predictor import ReidPredictor


class ServedReid(PythonModel):
    """Encoded images (column ``image``) -> embedding + attribute predictions, one row per image."""

    def load_context(self, context: Any) -> None:
        self.predictor = ReidPredictor.from_artifacts(context.artifacts)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        try:
            return self.predictor.predict(model_input)
        except UserError as exc:  # a bad image is the caller's mistake: HTTP 400, not 500
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(ServedReid())
