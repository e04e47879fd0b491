//! The Arrow projection of [`FlowRow`]: the same columns, names and meaning as the `flows`
//! table, as an Arrow schema and `RecordBatch`es. The relay's in-memory window keeps recent flows
//! in this form, and `periscope export` writes it to Arrow IPC and Parquet files that pandas,
//! DuckDB or `clickhouse-local … file()` read directly.
//!
//! Types follow the row: strings are `Utf8`, lists `List<…>`, `is_reply` a nullable `UInt8`,
//! `time_ns` an `Int64` of nanoseconds since the Unix epoch (a `time` column of type
//! `Timestamp(ns, UTC)` is added in front for tools that want a time type).
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, TimestampNanosecondArray};
use arrow_schema::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use serde_arrow::schema::{SchemaLike, TracingOptions};

use crate::FlowRow;

/// Why rows and record batches could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ArrowError {
    /// serde_arrow failed (a schema mismatch, for a batch that was not made by [`to_batch`]).
    #[error("arrow conversion ({operation}): {source}")]
    Convert {
        /// What was being done.
        operation: &'static str,
        /// The cause.
        #[source]
        source: serde_arrow::Error,
    },
    /// Building the batch failed.
    #[error("arrow record batch: {0}")]
    Batch(#[from] arrow_schema::ArrowError),
}

/// Name of the leading timestamp column.
pub const TIME_COLUMN: &str = "time";

/// The fields of a [`FlowRow`] (without the leading `time`).
pub fn row_fields() -> Vec<FieldRef> {
    static FIELDS: std::sync::OnceLock<Vec<FieldRef>> = std::sync::OnceLock::new();
    FIELDS
        .get_or_init(|| {
            // The row's `Option<u8>` is the only nullable column; every other column always holds a
            // value (possibly empty).
            Vec::<FieldRef>::from_type::<FlowRow>(TracingOptions::default().allow_null_fields(true))
                .expect("FlowRow has an Arrow schema")
        })
        .clone()
}

/// The schema of the batches made by [`to_batch`]: `time` then the row's columns.
pub fn schema() -> SchemaRef {
    let mut fields: Vec<FieldRef> = vec![Arc::new(Field::new(
        TIME_COLUMN,
        DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        false,
    ))];
    fields.extend(row_fields());
    Arc::new(Schema::new(fields))
}

/// Rows → one record batch of [`schema`].
pub fn to_batch(rows: &[FlowRow]) -> Result<RecordBatch, ArrowError> {
    let inner = serde_arrow::to_record_batch(&row_fields(), &rows).map_err(|source| {
        ArrowError::Convert {
            operation: "rows to batch",
            source,
        }
    })?;
    let time: ArrayRef = {
        let ns = inner
            .column_by_name("time_ns")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .expect("time_ns is Int64");
        Arc::new(TimestampNanosecondArray::new(ns.values().clone(), None).with_timezone("UTC"))
    };
    let mut columns = vec![time];
    columns.extend(inner.columns().iter().cloned());
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// A record batch of [`schema`] (or of [`row_fields`] alone) → rows.
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<FlowRow>, ArrowError> {
    let batch = match batch.schema().index_of(TIME_COLUMN) {
        Ok(i) => {
            let mut b = batch.clone();
            b.remove_column(i);
            b
        }
        Err(_) => batch.clone(),
    };
    serde_arrow::from_record_batch(&batch).map_err(|source| ArrowError::Convert {
        operation: "batch to rows",
        source,
    })
}

/// The `time_ns` range (min, max) of a batch made by [`to_batch`]; `None` if it is empty.
pub fn time_range(batch: &RecordBatch) -> Option<(i64, i64)> {
    let ns = batch
        .column_by_name("time_ns")?
        .as_any()
        .downcast_ref::<Int64Array>()?;
    let min = ns.values().iter().copied().min()?;
    let max = ns.values().iter().copied().max()?;
    Some((min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_a_batch() {
        let rows: Vec<FlowRow> = (0..3)
            .map(|i| {
                let mut f = crate::testing::full_flow();
                f.uuid = format!("uuid-{i}");
                f.time.as_mut().unwrap().seconds += i;
                if i == 1 {
                    f.is_reply = None;
                }
                FlowRow::from_flow(&f, "c1")
            })
            .collect();
        assert!(rows.len() >= 3);
        let batch = to_batch(&rows).unwrap();
        assert_eq!(batch.num_rows(), rows.len());
        assert_eq!(batch.schema(), schema());
        assert_eq!(batch.schema().field(0).name(), "time");
        assert_eq!(from_batch(&batch).unwrap(), rows);
        let (lo, hi) = time_range(&batch).unwrap();
        assert_eq!(lo, rows.iter().map(|r| r.time_ns).min().unwrap());
        assert_eq!(hi, rows.iter().map(|r| r.time_ns).max().unwrap());
        // The column names are the table's.
        for name in [
            "uuid",
            "verdict",
            "source_namespace",
            "destination_port",
            "is_reply",
        ] {
            assert!(batch.schema().index_of(name).is_ok(), "{name}");
        }
        assert!(to_batch(&[]).unwrap().num_rows() == 0);
    }
}
