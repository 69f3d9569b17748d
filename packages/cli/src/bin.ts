#!/usr/bin/env node
import { main } from './main.js';
import { finishWhenStdoutCloses } from './output.js';

finishWhenStdoutCloses();
process.exitCode = await main(process.argv);
