//! Writing a metric family computed at scrape time: a descriptor and its rows of
//! (labels, value), or a single unlabelled value, for the collectors. A family without
//! rows is left out.

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Unit;

/// What one family is: its name (without prefix or unit), help and unit.
#[derive(Debug, Clone)]
pub struct Desc {
    pub name: &'static str,
    pub help: &'static str,
    pub unit: Option<Unit>,
}

impl Desc {
    pub const fn new(name: &'static str, help: &'static str) -> Desc {
        Desc {
            name,
            help,
            unit: None,
        }
    }

    pub const fn bytes(name: &'static str, help: &'static str) -> Desc {
        Desc {
            name,
            help,
            unit: Some(Unit::Bytes),
        }
    }

    pub const fn seconds(name: &'static str, help: &'static str) -> Desc {
        Desc {
            name,
            help,
            unit: Some(Unit::Seconds),
        }
    }
}

/// A gauge family.
pub fn gauges<S: EncodeLabelSet, V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    d: Desc,
    rows: impl IntoIterator<Item = (S, V)>,
) -> Result<(), std::fmt::Error> {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(d.name, d.help, d.unit.as_ref(), MetricType::Gauge)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// A counter family (`_total` is appended to the name).
pub fn counters<S: EncodeLabelSet, V: EncodeCounterValue + Clone + std::fmt::Debug>(
    enc: &mut DescriptorEncoder<'_>,
    d: Desc,
    rows: impl IntoIterator<Item = (S, V)>,
) -> Result<(), std::fmt::Error>
where
    ConstCounter<V>: EncodeMetric,
{
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(d.name, d.help, d.unit.as_ref(), MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge without labels.
pub fn gauge<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    d: Desc,
    v: V,
) -> Result<(), std::fmt::Error> {
    enc.encode_descriptor(d.name, d.help, d.unit.as_ref(), MetricType::Gauge)?
        .encode_gauge(&v)
}

/// A counter without labels (`_total` is appended to the name).
pub fn counter<V: EncodeCounterValue + Clone + std::fmt::Debug>(
    enc: &mut DescriptorEncoder<'_>,
    d: Desc,
    v: V,
) -> Result<(), std::fmt::Error>
where
    ConstCounter<V>: EncodeMetric,
{
    ConstCounter::new(v).encode(enc.encode_descriptor(
        d.name,
        d.help,
        d.unit.as_ref(),
        MetricType::Counter,
    )?)
}
