use flow_runtime::prelude::*;

#[flow]
async fn logged(ctx: &mut FlowContext, s: FlowSession) -> Result<(), FlowError> {
    println!("{:?}", s.receive::<u32>().await);
    Ok(())
}

fn main() {}
