// Talking to the server: a streamed chat completion as a sequence of chunk objects, and the
// errors a person can act on (ApiError: the server's message and HTTP status; ConnectionLost).

import { SSEParser, parseData } from "./sse.js";

export class ApiError extends Error {
  constructor(status, message, body = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
  }
}

export class ConnectionLost extends Error {
  constructor(message = "lost the connection to the server") {
    super(message);
    this.name = "ConnectionLost";
  }
}

export function authHeaders(apiKey) {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

// The server's error message from a non-2xx response (OpenAI shape: {"error": {"message"}}).
export async function errorFrom(response) {
  let body = null;
  let message = `${response.status} ${response.statusText}`;
  try {
    body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, body);
}

export async function getJson(url, { apiKey, fetchImpl = fetch } = {}) {
  let response;
  try {
    response = await fetchImpl(url, { headers: authHeaders(apiKey) });
  } catch {
    throw new ConnectionLost();
  }
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

// POST `body` (stream: true) and yield each event's object until "[DONE]".
export async function* streamChat(url, body, { apiKey, signal, fetchImpl = fetch } = {}) {
  let response;
  try {
    response = await fetchImpl(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders(apiKey) },
      body: JSON.stringify({ ...body, stream: true }),
      signal,
    });
  } catch (err) {
    if (signal && signal.aborted) throw err;
    throw new ConnectionLost();
  }
  if (!response.ok) throw await errorFrom(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new SSEParser();
  for (;;) {
    let read;
    try {
      read = await reader.read();
    } catch (err) {
      if (signal && signal.aborted) throw err;
      throw new ConnectionLost("the connection to the server broke during the answer");
    }
    const pieces = read.done ? [...parser.feed(decoder.decode()), ...parser.end()] : parser.feed(decoder.decode(read.value, { stream: true }));
    for (const data of pieces) {
      const event = parseData(data);
      if (event.done) return;
      if (event.error) throw new ApiError(event.error.code || 500, event.error.message || "generation failed", event);
      yield event;
    }
    if (read.done) throw new ConnectionLost("the server ended the answer early (no [DONE])");
  }
}
