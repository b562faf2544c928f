"""The warehouse IO manager: asset values as Parquet tables or JSON documents in the warehouse bucket."""

import io
import json
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource

from tagging_platform import layout
from tagging_platform.s3 import is_not_found

# pandas' own attrs do not survive Parquet reliably across versions; we keep them in the schema metadata.
_ATTRS_KEY = b"tagging_platform.attrs"


class WarehouseIOManager(dg.ConfigurableIOManager):
    """Stores tables as Parquet and dicts as JSON under Hive-style paths: `<asset>/manifest=<key>/data.*`.

    Every step reads and writes S3, never local disk, so it works the same across step processes
    and across Kubernetes pods.
    """

    s3: dg.ResourceDependency[S3Resource]
    bucket: str
    prefix: str = layout.ASSETS_PREFIX

    def _base(self, asset_key: dg.AssetKey, partition: str | None) -> str:
        return layout.asset_base("/".join(asset_key.path), partition, root=self.prefix)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        base = self._base(context.asset_key, context.asset_partition_key if context.has_asset_partitions else None)
        client = self.s3.get_client()
        if isinstance(obj, pd.DataFrame):
            table = pa.Table.from_pandas(obj, preserve_index=False)
            obj = table.replace_schema_metadata(
                {**(table.schema.metadata or {}), _ATTRS_KEY: json.dumps(obj.attrs).encode()}
            )
        if isinstance(obj, pa.Table):
            sink = io.BytesIO()
            pq.write_table(obj, sink, compression="zstd")
            key = base + ".parquet"
            client.put_object(Bucket=self.bucket, Key=key, Body=sink.getvalue())
            context.add_output_metadata({"uri": f"s3://{self.bucket}/{key}", "dagster/row_count": obj.num_rows})
        elif isinstance(obj, dict | list):
            key = base + ".json"
            client.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(obj, default=str).encode())
            context.add_output_metadata({"uri": f"s3://{self.bucket}/{key}"})
        else:
            raise TypeError(f"{context.asset_key.to_user_string()}: cannot store a {type(obj).__name__}")

    def load_input(self, context: dg.InputContext) -> Any:
        """One partition's value, or, for an unpartitioned asset downstream, {partition: value} of all
        partitions that were materialized."""
        wanted = context.dagster_type.typing_type
        if not context.has_asset_partitions:
            return self._load(self._base(context.asset_key, None), wanted)
        if context.has_partition_key:
            return self._load(self._base(context.asset_key, context.asset_partition_key), wanted)
        values = {}
        for partition in context.asset_partition_keys:
            try:
                values[partition] = self._load(self._base(context.asset_key, partition), dict)
            except ClientError as exc:
                if not is_not_found(exc):
                    raise
                continue  # a batch whose run failed, or has not yet reached, this asset
        return values

    def _load(self, base: str, wanted: Any) -> Any:
        client = self.s3.get_client()
        if wanted is dict or wanted is list:
            return json.loads(client.get_object(Bucket=self.bucket, Key=base + ".json")["Body"].read())
        body = client.get_object(Bucket=self.bucket, Key=base + ".parquet")["Body"].read()
        table = pq.read_table(io.BytesIO(body))
        if wanted is pa.Table:
            return table
        frame = table.to_pandas()
        frame.attrs = json.loads((table.schema.metadata or {}).get(_ATTRS_KEY, b"{}"))
        return frame
