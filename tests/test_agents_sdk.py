"""The OpenAI Agents SDK (`openai-agents`), which uses the Responses API by default, runs an agent with a function
tool end to end through Tollgate: the model calls the tool, the SDK runs it and sends its output back."""

import asyncio

from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

from tests.test_usage_recording import wait_for_records

MODEL = "gpt-4o-mini"
set_tracing_disabled(True)  # the SDK would otherwise export traces to OpenAI


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def test_an_agent_with_a_function_tool_runs_through_tollgate(gateway, api_key):
    key, raw = api_key

    async def run():
        client = gateway.async_client(raw)
        agent = Agent(
            name="weather",
            instructions="Answer with the weather.",
            tools=[get_weather],
            model=OpenAIResponsesModel(model=MODEL, openai_client=client),
        )
        result = await Runner.run(agent, "What is the weather?")
        streamed = Runner.run_streamed(agent, "And now, streamed?")
        async for _ in streamed.stream_events():
            pass
        await client.close()
        return result.final_output, streamed.final_output

    plain, streamed = asyncio.run(run())
    assert plain == "tool said: sunny in tollgate"
    assert streamed == "tool said: sunny in tollgate"
    records = wait_for_records(4, key_prefix=key.prefix, endpoint="responses")
    assert all(record.status == 200 and not record.usage_estimated for record in records)
