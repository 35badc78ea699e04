use flow_runtime::prelude::*;

#[flow]
async fn shown(ctx: &mut FlowContext, s: FlowSession, label: impl std::fmt::Display) -> Result<String, FlowError> {
    let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
    Ok(format!("{label}{n}"))
}

fn main() {}
