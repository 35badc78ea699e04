use flow_runtime::prelude::*;

#[flow]
async fn keep_ref(ctx: &mut FlowContext, s: FlowSession, names: Vec<String>) -> Result<usize, FlowError> {
    let first: &String = &names[0];
    let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
    Ok(first.len() + n as usize)
}

fn main() {}
