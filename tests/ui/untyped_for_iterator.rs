use flow_runtime::prelude::*;

#[flow]
async fn each(ctx: &mut FlowContext, s: FlowSession) -> Result<(), FlowError> {
    let items = vec![1u32, 2, 3];
    for item in items {
        s.send(&item)?;
        let _ack: bool = s.receive::<bool>().await?.validate(Ok)?;
    }
    Ok(())
}

fn main() {}
